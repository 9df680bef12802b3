"""Blocked patches (`klpfleet patch block`) for status, metrics and the dashboard: when, by whom, why, and on how
many hosts each still runs. A blocked patch still running somewhere degrades the fleet's health: it is on the
hosts, and only a rollback (or a reboot) takes it off. Plain SQL, no ORM: `klpfleet status` imports this, and
importing the ORM alone costs it a fifth of its time."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BindParameter, Connection, bindparam, text

from klpfleet.db.types import UTCDateTime
from klpfleet.names import MAX_BLOCK_REASON
from klpfleet.states import PatchState

RUNNING_STATES = (PatchState.TRANSITIONING, PatchState.APPLIED, PatchState.FORCED)  # its code runs there
_RUNNING: BindParameter[list[str]] = bindparam("running", [s.value for s in RUNNING_STATES], expanding=True)


def blocked_patches(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(
            "SELECT p.name, p.sha256, p.blocked_at, p.blocked_by, p.blocked_reason, "
            "(SELECT count(*) FROM host_patches hp WHERE hp.patch_id = p.id AND hp.state IN :running) "
            "FROM patches p WHERE p.blocked_at IS NOT NULL ORDER BY p.blocked_at, p.name"
        )
        .bindparams(_RUNNING)
        .columns(blocked_at=UTCDateTime)
    )
    return [
        {
            "patch": name,
            "sha256": sha,
            "blocked_at": at,
            "blocked_by": (by or "unknown")[:255],
            "reason": (reason or "no reason given")[:MAX_BLOCK_REASON],  # a row can be edited: bounded here too
            "running_on": running,
        }
        for name, sha, at, by, reason, running in rows
    ]
