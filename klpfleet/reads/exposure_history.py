"""Exposure per CVE over time, from the audit trail: every `patch.state` event replayed in order, the hosts
covered by a patch naming the CVE counted at evenly spaced moments. The hosts in scope are those in scope now
(covered or exposed today); a host's kernel release is not replayed, so a host covered by a kernel marked as
fixing the CVE counts as covered throughout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from klpfleet.db.types import json_object
from klpfleet.reads.exposure import COVERED, COVERING_STATES, EXPOSED, catalogue, exposure

POINTS = 48  # a day at half-hour steps, a week at 3.5 hours: enough for a line, little to send


def exposure_history(conn: Connection, points: int = POINTS) -> dict[str, list[dict[str, Any]]]:
    """{cve: [{"at", "covered", "exposed"}, ...]} from the first state event to now, oldest first."""
    cat = catalogue(conn)
    now = exposure(conn)
    scope = {e.cve: {h["host"] for kind in (COVERED, EXPOSED) for h in e.hosts[kind]} for e in now}
    fixed_now = {e.cve: {h["host"] for h in e.hosts[COVERED] if h.get("reason", "").startswith("kernel")} for e in now}
    cve_patches = {cve: set(pids) for cve, pids in cat.patch_ids.items()}
    names: dict[int, str] = {hid: name for hid, name in conn.execute(text("SELECT id, name FROM hosts"))}
    rows = conn.execute(
        text("SELECT at, host_id, patch_id, details FROM events WHERE kind = 'patch.state' ORDER BY id")
    ).all()
    if not rows:
        return {cve: [] for cve in sorted(scope)}
    start, end = _utc(rows[0][0]), datetime.now(UTC)
    step = max((end - start) / max(points - 1, 1), timedelta(seconds=1))
    moments = [start + step * i for i in range(points)]
    covering: dict[tuple[Any, Any], bool] = {}
    out: dict[str, list[dict[str, Any]]] = {cve: [] for cve in sorted(scope)}
    i = 0
    for moment in moments:
        while i < len(rows) and _utc(rows[i][0]) <= moment:
            _at, host_id, patch_id, details = rows[i]
            covering[(host_id, patch_id)] = _state_to(details) in COVERING_STATES
            i += 1
        on = {(names.get(h), p) for (h, p), yes in covering.items() if yes}
        for cve, hosts in scope.items():
            covered = {h for h, p in on if p in cve_patches.get(cve, ())} | fixed_now.get(cve, set())
            n = len(covered & hosts)
            out[cve].append({"at": moment, "covered": n, "exposed": len(hosts) - n})
    return out


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _state_to(details: Any) -> str | None:
    """The state an event's details say the patch went to; a row that does not decode says nothing."""
    to = json_object(details).get("to")
    return to if isinstance(to, str) else None
