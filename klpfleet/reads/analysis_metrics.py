"""What active rollouts export for their analysis: each host's role in the rollout (the series a check joins with
to compare the wave with the control hosts at any size), the latest value of each check, and each wave's
transition times. The host role series is the one place klpfleet's metrics carry host names: only the hosts of
rollouts still running or paused, one series each."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Connection, text

from klpfleet.analysis.measure import transition_seconds, transition_stats
from klpfleet.db.types import json_object
from klpfleet.states import Outcome, RolloutStatus, WaveHostStatus

LIVE = f"'{RolloutStatus.RUNNING.value}', '{RolloutStatus.PAUSED.value}'"  # the enum's own values
MAX_EVENTS = 5000  # the newest analysis measurements read per scrape


def role_of(wave_index: int, current: int, status: str, outcome: str | None) -> str | None:
    """wave: patched in the current wave; patched: in an earlier one; control: not touched yet, in a later wave."""
    if outcome == Outcome.APPLIED and status == WaveHostStatus.DONE:
        return "wave" if wave_index == current else "patched"
    if status == WaveHostStatus.PENDING and wave_index > current:
        return "control"
    return None


def analysis_metrics(conn: Connection) -> list[GaugeMetricFamily]:
    roles = GaugeMetricFamily(
        "klpfleet_rollout_host",
        "1 per host of a running or paused rollout, by its role: wave (patched in the current wave), patched (in "
        "an earlier wave), control (not touched yet). Join a service metric with it to compare wave and control.",
        labels=["rollout", "host", "role"],  # no wave label: every series would be new at every wave
    )
    transition = GaugeMetricFamily(
        "klpfleet_wave_transition_seconds",
        "The transition times of a running or paused rollout's waves: p50, p95 and max over its patched hosts.",
        labels=["rollout", "wave", "stat"],
    )
    times: dict[tuple[int, int], list[float]] = {}
    rows = conn.execute(
        text(
            'SELECT r.id, coalesce(r.current_wave, 0), w."index", h.name, wh.status, wh.outcome, '  # noqa: S608
            "wh.transition_seconds FROM rollouts r JOIN waves w ON w.rollout_id = r.id "
            "JOIN wave_hosts wh ON wh.wave_id = w.id JOIN hosts h ON h.id = wh.host_id "
            f'WHERE r.status IN ({LIVE}) ORDER BY r.id, w."index", h.name'
        )
    ).all()
    for rid, current, index, host, status, outcome, seconds in rows:
        role = role_of(index, current, status, outcome)
        if role is not None:
            roles.add_metric([str(rid), host, role], 1)
        believed = transition_seconds(seconds)
        if believed is not None and outcome == Outcome.APPLIED:
            times.setdefault((rid, index + 1), []).append(believed)
    for (rid, wave), values in sorted(times.items()):
        for stat, figure in transition_stats(values).items():
            if stat != "hosts":
                transition.add_metric([str(rid), str(wave), stat], figure)
    return [roles, transition, *check_metrics(conn)]


def check_metrics(conn: Connection) -> list[GaugeMetricFamily]:
    """The latest measurement of each check of each running or paused rollout (the events are read as hostile)."""
    value = GaugeMetricFamily(
        "klpfleet_analysis_value", "The latest value a rollout's check measured.", labels=["rollout", "wave", "check"]
    )
    passing = GaugeMetricFamily(
        "klpfleet_analysis_passing",
        "1 when a rollout's check's latest measurement passed, 0 when it failed, -1 when inconclusive or in error.",
        labels=["rollout", "wave", "check"],
    )
    rows = conn.execute(
        text(
            "SELECT e.rollout_id, e.details FROM events e JOIN rollouts r ON r.id = e.rollout_id "  # noqa: S608
            f"WHERE e.kind = 'analysis.measured' AND r.status IN ({LIVE}) ORDER BY e.id DESC LIMIT {MAX_EVENTS}"
        )
    ).all()
    seen: set[tuple[int, str]] = set()
    for rid, raw in rows:
        details = json_object(raw)
        check, wave, result = details.get("check"), details.get("wave"), details.get("result")
        if not isinstance(check, str) or not isinstance(wave, int) or (rid, check) in seen:
            continue
        seen.add((rid, check))
        labels = [str(rid), str(wave), check[:64]]
        if isinstance(details.get("value"), (int, float)) and not isinstance(details.get("value"), bool):
            value.add_metric(labels, float(details["value"]))
        passing.add_metric(labels, {"passed": 1, "failed": 0}.get(str(result), -1))
    return [value, passing]
