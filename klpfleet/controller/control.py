"""Operators' requests on a rollout (pause, resume, promote, abort), through the one transitions table.

Each request is one transaction: the status change the table allows (or one clear line saying what the
rollout would need to be), the runtime control it carries, and its event naming who asked. A request that
needs a driver where none is alive (resume, promote, abort) gets one started detached by spawn_driver.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from klpfleet.db import events
from klpfleet.db.engine import Database
from klpfleet.db.models import Rollout, utcnow
from klpfleet.errors import UsageError
from klpfleet.registry.blocks import refuse_if_blocked
from klpfleet.states import (
    ROLLOUT_TRANSITIONS,
    TERMINAL_ROLLOUT_STATUSES,
    Request,
    RolloutStatus,
    WaveStatus,
    allowed_from,
)


def request(
    db: Database,
    rollout_id: int,
    what: Request,
    *,
    reason: str | None = None,
    actor: str | None = None,
    full: bool = False,
) -> Rollout:
    """Apply an operator's request. `promote` overrides the gate of the rollout's current wave (a blocked
    wave completes) and, with `full`, every later pause, bake and refusal gate."""
    with db.session.begin() as s:
        r = s.get(Rollout, rollout_id)
        if r is None:
            raise UsageError(f"no rollout {rollout_id} (see `klpfleet rollout list`)")
        return apply_request(s, r, what, reason=reason, actor=actor, full=full)


def apply_request(
    s: Session, r: Rollout, what: Request, *, reason: str | None, actor: str | None, full: bool = False
) -> Rollout:
    """The request on a rollout read in the caller's transaction (see `request`)."""
    previous = RolloutStatus(r.status)
    if what in (Request.RESUME, Request.PROMOTE):
        refuse_if_blocked(r.patch)  # going on would load it on more hosts
    to = ROLLOUT_TRANSITIONS.get((what, previous))
    if to is None:
        needs = " or ".join(allowed_from(what))
        raise UsageError(f"rollout {r.id} is {previous}; {what} needs it {needs}")
    r.status = to
    if to in TERMINAL_ROLLOUT_STATUSES:
        r.finished_at, r.pause_reason = utcnow(), reason
    elif to == RolloutStatus.PAUSED:
        r.pause_reason = reason
    elif to == RolloutStatus.RUNNING:
        r.pause_reason = None
    details: dict[str, Any] = {}
    if what == Request.PROMOTE:
        wave = r.current_wave or 0
        r.gate_overrides = sorted(set(r.gate_overrides or []) | {wave})
        r.promoted_full = r.promoted_full or full
        for w in r.waves:
            if w.status == WaveStatus.BLOCKED:
                w.status = WaveStatus.RUNNING
        details = {"wave": wave + 1, "full": full}
    events.add(
        s,
        f"rollout.{what}_requested",
        actor=actor,
        rollout=r,
        patch=r.patch,
        previous=previous.value,
        reason=reason,
        **details,
    )
    return r


def delete_planned(db: Database, rollout_id: int, actor: str | None = None) -> int:
    """Delete a rollout that never started (its hosts are free for another); its events stay, and one more says
    what was deleted. The number of hosts it held."""
    with db.session.begin() as s:
        r = s.get(Rollout, rollout_id)
        if r is None:
            raise UsageError(f"no rollout {rollout_id} (see `klpfleet rollout list`)")
        if r.status != RolloutStatus.PLANNED:
            raise UsageError(
                f"rollout {rollout_id} is {r.status}; only a planned rollout is deleted (its record is the audit "
                "trail of what ran)"
            )
        hosts = sum(len(w.hosts) for w in r.waves)
        events.add(s, "rollout.deleted", actor=actor, patch=r.patch, deleted_rollout=rollout_id, hosts=hosts)
        s.delete(r)
        return hosts


def driver_alive(db: Database, rollout_id: int) -> bool:
    with db.session() as s:
        r = s.get(Rollout, rollout_id)
        return bool(r and r.lease_owner and r.lease_expires and r.lease_expires > utcnow())


def spawn_driver(db: Database, rollout_id: int) -> Path:
    """Drive the rollout in a process of its own, detached, logging to its driver.log (returned)."""
    from klpfleet.runs.types import runs_dir

    log_dir = runs_dir(db) / f"rollout-{rollout_id}"
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(log_dir / "driver.log", "ab") as log:
        subprocess.Popen(  # noqa: S603 - our own CLI, argv list
            # The database URL (password included) goes by environment, never argv: `ps` shows argv to all.
            [sys.executable, "-m", "klpfleet.cli.main", "rollout", "drive", str(rollout_id)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "NO_COLOR": "1", "KLPFLEET_DB": db.url},
        )
    return log_dir / "driver.log"
