"""The `klpfleet` command line."""
