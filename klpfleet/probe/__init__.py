"""Read-only fleet probe over SSH."""
