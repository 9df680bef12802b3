"""The simulated kernel: livepatch semantics as ../shared/docs/kernel-livepatch.md specifies them."""
