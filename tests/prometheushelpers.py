"""A real Prometheus (Debian's package) on a loopback port, scraping a simulated fleet's service metrics and
klpfleet's own /metrics every second; started and stopped by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.exposition import start_http_server

from klpfleet.db.engine import Database
from klpfleet.reads.metrics import registry_for
from klpfleet.sim.exporter import DEFAULT_BASELINE, serve
from klpfleet.sim.monitoring import LocalPrometheus, free_port, prometheus_binary

needs_prometheus = pytest.mark.skipif(
    prometheus_binary() is None, reason="Prometheus is not installed (apt-get install prometheus; CI does)"
)


class PrometheusServer(LocalPrometheus):
    """Prometheus scraping the fleet's exporter (job sim) and klpfleet's metrics of `db` (job klpfleet)."""

    def __init__(self, directory: Path, fleet_dir: Path, db: Database) -> None:
        sim_port, klpfleet_port = free_port(), free_port()
        self.servers = [
            serve(fleet_dir, "127.0.0.1", sim_port, DEFAULT_BASELINE)[0],
            start_http_server(klpfleet_port, addr="127.0.0.1", registry=registry_for(db.engine.connect))[0],
        ]
        super().__init__(directory / "prometheus", {"sim": sim_port, "klpfleet": klpfleet_port})

    def close(self) -> None:
        self.stop()
        for server in self.servers:
            server.shutdown()
