"""A simulated fleet's service metrics for Prometheus to scrape: per host, each metric's baseline plus what every
patch loaded there adds (its spec's `metrics`, e.g. `error_rate: 0.05`), so a bad patch shows in the metrics only
where it is loaded, as it would on a real fleet. Used by the tests and the demo to drive analysis checks."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from klpfleet.errors import UsageError
from klpfleet.sim.fleet import sim_kernel

DEFAULT_BASELINE = {"error_rate": 0.001}


class FleetMetrics(Collector):
    def __init__(self, fleet_dir: Path, baseline: dict[str, float] | None = None) -> None:
        self.hosts_dir = fleet_dir / "hosts"
        self.baseline = dict(DEFAULT_BASELINE if baseline is None else baseline)

    def host_values(self) -> dict[str, dict[str, float]]:
        sim = sim_kernel()
        values: dict[str, dict[str, float]] = {}
        for host in sorted(self.hosts_dir.iterdir()):
            try:
                state = sim.load_state(str(host / sim.STATE_FILE))
            except OSError:
                continue  # a host being rebooted or damaged says nothing this scrape, as a real one would
            totals = dict(self.baseline)
            for patch in state["patches"]:
                if any(o.get("patched") for o in patch.get("objects", [])):
                    spec = state["modules"].get(patch.get("module"), {}).get("spec", {})
                    for name, added in (spec.get("metrics") or {}).items():
                        totals[name] = totals.get(name, 0.0) + float(added)
            values[host.name] = totals
        return values

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        for host, totals in self.host_values().items():
            for name, value in sorted(totals.items()):
                if name not in families:
                    families[name] = GaugeMetricFamily(
                        f"klpfleet_sim_{name}", f"A simulated service's {name} on each host.", labels=["host"]
                    )
                families[name].add_metric([host], value)
        yield from families.values()


def parse_baseline(items: list[str]) -> dict[str, float]:
    baseline = dict(DEFAULT_BASELINE)
    for item in items:
        name, _, value = item.partition("=")
        if not re.match(r"^[a-z][a-z0-9_]{0,63}$", name):
            raise UsageError(f"--baseline: {item!r} is not NAME=VALUE")
        try:
            baseline[name] = float(value)
        except ValueError:
            raise UsageError(f"--baseline: {value!r} is not a number") from None
    return baseline


def serve(fleet_dir: Path, address: str, port: int, baseline: dict[str, float]) -> tuple[Any, threading.Thread]:
    """Serve the fleet's metrics on address:port in a thread; (server, thread)."""
    if not (fleet_dir / "hosts").is_dir():
        raise UsageError(f"{fleet_dir} is not a simulated fleet (no hosts/ in it)")
    registry = CollectorRegistry()
    registry.register(FleetMetrics(fleet_dir, baseline))
    return start_http_server(port, addr=address, registry=registry)
