"""The simulated kernel: livepatch semantics as docs/kernel.md describes them."""
