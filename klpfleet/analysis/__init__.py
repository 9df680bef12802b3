"""Analysis: a rollout's metric checks, measured against Prometheus (or the wave's own transition times)."""
