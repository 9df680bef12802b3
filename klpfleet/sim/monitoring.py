"""A Prometheus server of one's own for a simulated fleet: Debian's `prometheus` binary on a loopback port with a
scrape config written here (every second), its data and log in one directory. The demo and the tests use it to
gate rollouts on what the simulated fleet's service metrics show."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from klpfleet.errors import KlpfleetError

START_TIMEOUT = 60.0  # seconds for Prometheus to start and scrape every target once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class LocalPrometheus:
    def __init__(self, directory: Path, targets: dict[str, int]) -> None:
        """targets: scrape job name -> a port on 127.0.0.1 serving /metrics."""
        self.directory = directory
        self.targets = targets
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        jobs = "".join(
            f"  - {{job_name: {job}, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}\n"
            for job, port in targets.items()
        )
        self.config = directory / "prometheus.yml"
        self.config.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{jobs}")

    def start(self) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise KlpfleetError("Prometheus is not installed (apt-get install prometheus)")
        with open(self.directory / "prometheus.log", "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - the installed binary, argv list, our own paths
                [
                    binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        jobs = "|".join(self.targets)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.scalar(f'count(up{{job=~"{jobs}"}} == 1)') == len(self.targets):
                return
            time.sleep(0.3)
        tail = (self.directory / "prometheus.log").read_text(errors="replace")[-1500:]
        self.stop()
        raise KlpfleetError(f"Prometheus did not scrape its targets within {START_TIMEOUT:g}s: {tail}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def scalar(self, promql: str) -> float | None:
        """The query's single value, or None (not answering yet, no series)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own http URL
                result = json.load(response)["data"]["result"]
        except (OSError, ValueError, KeyError):
            return None
        return float(result[0]["value"][1]) if result else None


class FleetPrometheus(LocalPrometheus):
    """Prometheus scraping a simulated fleet's service metrics (job `sim`, klpfleet.sim.exporter) and klpfleet's own
    metrics (job `klpfleet`, the registry given: reads.metrics.registry_for), each served here on a loopback port."""

    def __init__(self, directory: Path, fleet_dir: Path, klpfleet_registry: Any) -> None:
        from prometheus_client.exposition import start_http_server

        from klpfleet.sim.exporter import DEFAULT_BASELINE, serve

        sim_port, klpfleet_port = free_port(), free_port()
        self.servers = [
            serve(fleet_dir, "127.0.0.1", sim_port, DEFAULT_BASELINE)[0],
            start_http_server(klpfleet_port, addr="127.0.0.1", registry=klpfleet_registry)[0],
        ]
        super().__init__(directory, {"sim": sim_port, "klpfleet": klpfleet_port})

    def close(self) -> None:
        self.stop()
        for server in self.servers:
            server.shutdown()
