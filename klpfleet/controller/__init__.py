"""Rollout controller."""
