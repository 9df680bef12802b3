"""Read models: what the CLI, the dashboard and the metrics show, computed from the database and never
written back. Nothing here imports the controller or the CLI."""
