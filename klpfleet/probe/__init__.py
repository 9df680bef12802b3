"""Read-only fleet probe over SSH: live state, drift, health checks (run.py drives it)."""
