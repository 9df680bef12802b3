"""The fleet as Prometheus metrics: `klpfleet metrics` (stdout, or `--textfile` for node_exporter's textfile
collector).

Built with the standard client library from the same reads as `klpfleet status` (fleet_status, exposure
counts) plus two small queries (rollouts by status with the current wave's counts, and the newest observation per
inventory group). Labels are bounded: patches, states, kernel releases, CVEs, rollout statuses, active rollouts
inventory groups and execution nodes; hosts only in klpfleet_rollout_host, for running and paused rollouts
(reads/analysis_metrics). Every value is a gauge: it is the fleet's state at the moment
of the scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import JSON, Connection, text

from klpfleet.db.types import UTCDateTime
from klpfleet.reads.analysis_metrics import analysis_metrics
from klpfleet.reads.exposure import COVERED, EXPOSED, UNKNOWN, exposure_counts
from klpfleet.reads.fleet_status import HEALTH_EXIT, fleet_status
from klpfleet.reads.reboot_debt import reboot_debt
from klpfleet.states import ACTIVE_ROLLOUT_STATUSES, PatchState, RolloutStatus, counted_as


class FleetCollector(Collector):
    """Reads the database at each collect(): one scrape, one consistent read."""

    def __init__(self, connect: Any) -> None:
        self.connect = connect  # a callable returning a context manager that yields a Connection

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.connect() as conn:
            yield from fleet_metrics(conn, datetime.now(UTC))


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def fleet_metrics(conn: Connection, now: datetime) -> list[GaugeMetricFamily]:
    status = fleet_status(conn, attention_limit=0)
    out: list[GaugeMetricFamily] = []

    health = _gauge(
        "klpfleet_fleet_health", "The fleet's health as `klpfleet status` rates it: 0 healthy, 1 degraded, 2 critical."
    )
    health.add_metric([], HEALTH_EXIT[status["health"]])
    out.append(health)

    hosts = status["hosts"]
    total = _gauge("klpfleet_hosts", "Hosts in the inventory database.")
    total.add_metric([], hosts["total"])
    unreachable = _gauge("klpfleet_hosts_unreachable", "Hosts that could not be reached when last tried.")
    unreachable.add_metric([], hosts["unreachable"])
    by_release = _gauge("klpfleet_kernel_release_hosts", "Hosts by the kernel release they run.", ["kernel_release"])
    for release, count in sorted(hosts["by_kernel_release"].items()):
        by_release.add_metric([release], count)
    out += [total, unreachable, by_release]

    patch_hosts = _gauge(
        "klpfleet_patch_hosts",
        "Hosts by patch and by the patch's state there (every state listed, 0 when none).",
        ["patch", "sha256", "kernel_release", "state"],
    )
    for p in status["patches"]:
        for state in PatchState:
            patch_hosts.add_metric(
                [p["name"], p["sha256"][:12], p["kernel_release"], state.value], p["states"].get(state.value, 0)
            )
    out.append(patch_hosts)

    attention = _gauge("klpfleet_attention_hosts", "Host patches in a state that needs attention, by state.", ["state"])
    for state, count in sorted(status["attention"]["by_state"].items()):
        attention.add_metric([state], count)
    out.append(attention)

    cve_hosts = _gauge(
        "klpfleet_cve_hosts", "Hosts covered, exposed or unknown per CVE (klpfleet cves).", ["cve", "exposure"]
    )
    exposed = _gauge(
        "klpfleet_cve_exposed_hosts",
        "Hosts exposed to a CVE, by why (pending, refused, lost_at_reboot ...).",
        ["cve", "reason"],
    )
    for e in exposure_counts(conn):
        counts = e.counts()
        for kind in (COVERED, EXPOSED, UNKNOWN):
            cve_hosts.add_metric([e.cve, kind], counts[kind])
        for reason, count in e.exposed_by_reason().items():
            exposed.add_metric([e.cve, reason], count)
    out += [cve_hosts, exposed]

    debt = _gauge(
        "klpfleet_hosts_reboot_required", "Hosts that only a reboot can make clean (forced or pinned modules)."
    )
    debt.add_metric([], status["reboot_required"]["total"])
    debt_since = _gauge(
        "klpfleet_host_reboot_required_since_seconds",
        "Since when (Unix time) each host has owed a reboot.",
        ["host"],
    )
    for h in reboot_debt(conn):
        debt_since.add_metric([h["host"]], h["since"].timestamp())
    out += [debt, debt_since]

    blocked = _gauge(
        "klpfleet_patch_blocked",
        "Hosts each blocked patch (klpfleet patch block) still runs on; the series exists while it is blocked.",
        ["patch", "sha256"],
    )
    for b in status["blocked_patches"]:
        blocked.add_metric([b["patch"], b["sha256"]], b["running_on"])
    out.append(blocked)

    out += rollout_metrics(conn)
    out += analysis_metrics(conn)
    out.append(observation_age(conn, now))
    out += node_metrics(conn, now)
    return out


def rollout_metrics(conn: Connection) -> list[GaugeMetricFamily]:
    by_status = _gauge("klpfleet_rollouts", "Rollouts by status.", ["status"])
    counts: dict[str, int] = {
        s: n for s, n in conn.execute(text("SELECT status, count(*) FROM rollouts GROUP BY status"))
    }
    for status in RolloutStatus:
        by_status.add_metric([status.value], counts.get(status.value, 0))
    wave = _gauge(
        "klpfleet_rollout_wave_hosts",
        "Hosts of each active rollout's current wave, by outcome (or pending/running while in flight).",
        ["rollout", "patch", "wave", "outcome"],
    )
    active = ",".join(f"'{s.value}'" for s in ACTIVE_ROLLOUT_STATUSES)  # the enum's own values
    rows = conn.execute(
        text(
            'SELECT r.id, p.name, w."index", wh.status, wh.outcome, count(*) FROM rollouts r '  # noqa: S608
            "JOIN patches p ON p.id = r.patch_id "
            'JOIN waves w ON w.rollout_id = r.id AND w."index" = coalesce(r.current_wave, 0) '
            "JOIN wave_hosts wh ON wh.wave_id = w.id "
            f'WHERE r.status IN ({active}) GROUP BY r.id, p.name, w."index", wh.status, wh.outcome'
        )
    ).all()
    for rid, patch, index, status, outcome, count in rows:
        wave.add_metric([str(rid), patch, str(index + 1), counted_as(status, outcome)], count)
    return [by_status, wave]


def node_metrics(conn: Connection, now: datetime) -> list[GaugeMetricFamily]:
    """Execution nodes as their last check (`node add`, `node check`, `node list --check`) found them."""
    ready = _gauge(
        "klpfleet_execution_node_ready",
        "1 when the node's last check found it ready, 0 when it did not, -1 when it was never checked.",
        ["node", "serves"],
    )
    age = _gauge("klpfleet_execution_node_check_age_seconds", "Seconds since the node was last checked.", ["node"])
    rows = conn.execute(
        text(
            "SELECT name, serves_label, serves_value, capacity, checked_at FROM execution_nodes ORDER BY name"
        ).columns(capacity=JSON, checked_at=UTCDateTime)
    ).all()
    for name, label, value, capacity, checked_at in rows:
        serves = f"{label}={value}" if label else ""
        if checked_at is None:
            ready.add_metric([name, serves], -1)
            continue
        ready.add_metric([name, serves], 0 if (capacity or {}).get("problems") else 1)
        age.add_metric([name], max(0.0, (now - checked_at).total_seconds()))
    return [ready, age]


def observation_age(conn: Connection, now: datetime) -> GaugeMetricFamily:
    """Seconds since any host of each inventory group was last seen (stale data shows as a growing age)."""
    age = _gauge(
        "klpfleet_group_observation_age_seconds",
        "Seconds since the newest observation of any host in the inventory group (gather, probe or a rollout).",
        ["group"],
    )
    rows = conn.execute(
        text(
            "SELECT g.name, max(h.last_seen) AS newest FROM groups g "
            "JOIN host_groups hg ON hg.group_id = g.id JOIN hosts h ON h.id = hg.host_id "
            "GROUP BY g.name ORDER BY g.name"
        ).columns(newest=UTCDateTime)
    ).all()
    for group, newest in rows:
        if newest is not None:
            age.add_metric([group], max(0.0, (now - newest).total_seconds()))
    return age


def registry_for(connect: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(connect))
    return registry


def exposition(connect: Any) -> bytes:
    return generate_latest(registry_for(connect))


def write_textfile(connect: Any, path: str) -> None:
    """Written to a temporary file beside PATH and renamed over it: node_exporter never reads half a file."""
    write_to_textfile(path, registry_for(connect))
