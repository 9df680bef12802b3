"""Inventory database: models, engine and migrations."""
