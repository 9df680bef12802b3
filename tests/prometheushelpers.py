"""A real Prometheus (Debian's package) on a loopback port, scraping a simulated fleet's service metrics and
klpfleet's own /metrics every second; started and stopped by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from klpfleet.db.engine import Database
from klpfleet.reads.metrics import registry_for
from klpfleet.sim.monitoring import FleetPrometheus, prometheus_binary

needs_prometheus = pytest.mark.skipif(
    prometheus_binary() is None, reason="Prometheus is not installed (apt-get install prometheus; CI does)"
)


def fleet_prometheus(directory: Path, fleet_dir: Path, db: Database) -> FleetPrometheus:
    """Prometheus scraping the fleet's exporter and klpfleet's metrics of `db` (the demo's own setup)."""
    return FleetPrometheus(directory / "prometheus", fleet_dir, registry_for(db.engine.connect))
