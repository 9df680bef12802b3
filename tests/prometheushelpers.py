"""A real Prometheus (Debian's package) on a loopback port, scraping a simulated fleet's service metrics and
klpfleet's own /metrics every second; started and stopped by the tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from klpfleet.db.engine import Database
from klpfleet.reads.metrics import registry_for
from klpfleet.sim.exporter import DEFAULT_BASELINE, serve

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="Prometheus is not installed (apt-get install prometheus; CI does)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    def __init__(self, directory: Path, fleet_dir: Path, db: Database) -> None:
        from prometheus_client.exposition import start_http_server

        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        sim_port, klpfleet_port = free_port(), free_port()
        self.servers = [
            serve(fleet_dir, "127.0.0.1", sim_port, DEFAULT_BASELINE)[0],
            start_http_server(klpfleet_port, addr="127.0.0.1", registry=registry_for(db.engine.connect))[0],
        ]
        self.config = directory / "prometheus.yml"
        self.config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - {{job_name: sim, static_configs: [{{targets: ['127.0.0.1:{sim_port}']}}]}}\n"
            f"  - {{job_name: klpfleet, static_configs: [{{targets: ['127.0.0.1:{klpfleet_port}']}}]}}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert PROMETHEUS is not None
        log = open(self.directory / "prometheus.log", "ab")  # noqa: SIM115 - the process keeps it
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.scalar('count(up{job=~"sim|klpfleet"} == 1)') == 2:
                return
            time.sleep(0.3)
        raise AssertionError(
            f"Prometheus did not scrape both targets: {(self.directory / 'prometheus.log').read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None

    def close(self) -> None:
        self.stop()
        for server in self.servers:
            server.shutdown()

    def scalar(self, promql: str) -> float | None:
        """The query's single value, or None (no answer yet, no series)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                result = json.load(response)["data"]["result"]
        except OSError:
            return None
        return float(result[0]["value"][1]) if result else None
