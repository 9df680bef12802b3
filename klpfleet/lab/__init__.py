"""The real-kernel lab: Debian 12's kernel under QEMU, reached over SSH like any fleet host."""
