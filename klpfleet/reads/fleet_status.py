"""`klpfleet status`: the fleet's health in a handful of aggregate queries.

Monitoring calls this every minute against fleets of 100,000 hosts, so it uses SQLAlchemy Core with
plain SQL and no ORM (importing the ORM alone costs more than the queries).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import BindParameter, Connection, bindparam, text

from klpfleet.db.types import UTCDateTime, json_object
from klpfleet.states import (
    ACTIVE_ROLLOUT_STATUSES,
    ATTENTION_REASONS,
    ATTENTION_STATES,
    CRITICAL_STATES,
    PatchState,
    wave_number,
)

HEALTH_EXIT = {"healthy": 0, "degraded": 1, "critical": 2, "unknown": 3}

_ATTENTION: BindParameter[list[str]] = bindparam("attention", [s.value for s in ATTENTION_STATES], expanding=True)
_CRITICAL: BindParameter[list[str]] = bindparam("critical", [s.value for s in CRITICAL_STATES], expanding=True)
_KNOWN: BindParameter[list[str]] = bindparam("known", [s.value for s in PatchState], expanding=True)
_ACTIVE: BindParameter[list[str]] = bindparam("active", [s.value for s in ACTIVE_ROLLOUT_STATUSES], expanding=True)


def fleet_status(conn: Connection, attention_limit: int = 50) -> dict[str, Any]:
    total, reachable, unreachable = conn.execute(
        text(
            "SELECT count(*), "
            "coalesce(sum(CASE WHEN reachable THEN 1 ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN NOT reachable THEN 1 ELSE 0 END), 0) FROM hosts"
        )
    ).one()
    by_kernel = {
        (release or "unknown"): count
        for release, count in conn.execute(
            text("SELECT kernel_release, count(*) FROM hosts GROUP BY kernel_release ORDER BY kernel_release")
        )
    }

    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for patch_id, state, count in conn.execute(
        text("SELECT patch_id, state, count(*) FROM host_patches GROUP BY patch_id, state ORDER BY state")
    ):
        counts[patch_id][state] = count
    patches = [
        {"name": name, "sha256": sha, "kernel_release": release, "states": counts.get(pid, {})}
        for pid, name, sha, release in conn.execute(
            text("SELECT id, name, sha256, kernel_release FROM patches ORDER BY name, added_at")
        )
    ]

    rollouts = [
        {
            "id": rid,
            "patch": patch,
            "status": status,
            "current_wave": wave_number(status, wave),
            "waves": waves,
            "pause_reason": reason,
        }
        for rid, patch, status, wave, reason, waves in conn.execute(
            text(
                "SELECT r.id, p.name, r.status, r.current_wave, r.pause_reason, "
                "(SELECT count(*) FROM waves w WHERE w.rollout_id = r.id) "
                "FROM rollouts r JOIN patches p ON p.id = r.patch_id WHERE r.status IN :active ORDER BY r.id"
            ).bindparams(_ACTIVE)
        )
    ]

    by_state: dict[str, int] = dict(
        conn.execute(
            text(
                "SELECT state, count(*) FROM host_patches WHERE state IN :attention GROUP BY state ORDER BY state"
            ).bindparams(_ATTENTION)
        ).all()
    )
    attention: list[dict[str, Any]] = [
        {
            "host": host,
            "patch": patch,
            "state": state,
            "reason": ATTENTION_REASONS[PatchState(state)],
            "error_code": error,
            "observed_at": at,
        }
        for host, patch, state, error, at in conn.execute(
            text(
                "SELECT h.name, p.name, hp.state, hp.error_code, hp.observed_at FROM host_patches hp "
                "JOIN hosts h ON h.id = hp.host_id JOIN patches p ON p.id = hp.patch_id "
                "WHERE hp.state IN :attention ORDER BY hp.observed_at DESC, h.name LIMIT :limit"
            )
            .bindparams(_ATTENTION, limit=attention_limit)
            .columns(observed_at=UTCDateTime)
        )
    ]
    attention += [
        {
            "host": host,
            "patch": None,
            "state": "unreachable",
            "reason": "host unreachable",
            "error_code": None,
            "observed_at": seen,
        }
        for host, seen in conn.execute(
            text("SELECT name, last_seen FROM hosts WHERE NOT reachable ORDER BY name LIMIT :limit")
            .bindparams(limit=attention_limit)
            .columns(last_seen=UTCDateTime)
        )
    ]

    # Stalled or failed is critical only while the host may be half-patched (not verified clean).
    critical = conn.execute(
        text(
            "SELECT count(*) FROM host_patches WHERE state IN :critical AND (host_clean IS NULL OR NOT host_clean)"
        ).bindparams(_CRITICAL)
    ).scalar()
    # A state no klpfleet wrote (a hand-edited or forged row) is not a verdict klpfleet can give: unknown.
    strange = conn.execute(
        text("SELECT count(*) FROM host_patches WHERE state NOT IN :known").bindparams(_KNOWN)
    ).scalar()
    from klpfleet.reads.blocked import blocked_patches

    blocked = blocked_patches(conn)
    if strange:
        health = "unknown"
    elif critical:
        health = "critical"
    elif by_state or unreachable or any(b["running_on"] for b in blocked):
        health = "degraded"
    else:
        health = "healthy"
    from klpfleet.reads.exposure import exposure_counts
    from klpfleet.reads.reboot_debt import reboot_debt

    debt = reboot_debt(conn)
    # Hosts the pre-flight left out of the active rollouts (they would have refused): listed by `rollout status`.
    preflight_excluded = 0
    for (details,) in conn.execute(
        text(
            "SELECT e.details FROM events e JOIN rollouts r ON r.id = e.rollout_id "
            "WHERE e.kind = 'preflight.summary' AND r.status IN :active"
        ).bindparams(_ACTIVE)
    ):
        excluded = json_object(details).get("excluded")
        if isinstance(excluded, int) and not isinstance(excluded, bool) and 0 <= excluded < 10**7:  # a row, hostile
            preflight_excluded += excluded

    cves = [dict(e.counts(), cve=e.cve, exposed_by_reason=e.exposed_by_reason()) for e in exposure_counts(conn)]
    return {
        "health": health,
        "hosts": {"total": total, "reachable": reachable, "unreachable": unreachable, "by_kernel_release": by_kernel},
        "patches": patches,
        "rollouts": rollouts,
        "unknown_states": strange,  # rows whose state is none klpfleet writes: health is unknown while any exist
        "cves": cves,  # hosts covered, exposed and unknown per CVE (klpfleet cves); not part of the health
        # Hosts only a reboot can make clean (forced or pinned modules, patches that could not be removed).
        "reboot_required": {"total": len(debt), "hosts": debt[:attention_limit]},
        "preflight_excluded": preflight_excluded,
        # Patches an operator blocked (klpfleet patch block), and on how many hosts each still runs.
        "blocked_patches": blocked,
        "attention": {
            "total": sum(by_state.values()) + unreachable,
            "by_state": by_state,
            "hosts": attention[:attention_limit],
        },
    }
