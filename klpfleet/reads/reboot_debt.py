"""Reboot debt: hosts that only a reboot can make clean, since when and why.

A forced transition pins a patch's module until reboot (on some kernels every patch present; see the patch
module's force_semantics): the host shows `forced` (enabled, pinned) or `pinned` (disabled, its module still
loaded). A patch that could not be removed (`forced_unremovable`, a module still `in_use`) stays until reboot
too. Few hosts are ever in debt, so the "since when" is read from each debt's own events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, text

from klpfleet.db.types import UTCDateTime
from klpfleet.states import PatchState

DEBT_STATES = (PatchState.FORCED.value, PatchState.PINNED.value)
UNREMOVABLE = ("forced_unremovable", "in_use")
WHY = {
    PatchState.FORCED.value: "{patch} is enabled and a forced transition pinned its module",
    PatchState.PINNED.value: "{patch} is disabled but a forced transition pinned its module",
    "forced_unremovable": "{patch} could not be removed: a forced transition pinned its module",
    "in_use": "{patch} could not be removed: its module is in use",
}


def reboot_debt(conn: Connection, limit: int | None = None) -> list[dict[str, Any]]:
    """[{host, since, reasons: [{patch, state, why, since}]}], the longest owed first."""
    rows = conn.execute(
        text(
            "SELECT h.id, h.name, p.id, p.name, hp.state, hp.error_code, hp.observed_at FROM host_patches hp "
            "JOIN hosts h ON h.id = hp.host_id JOIN patches p ON p.id = hp.patch_id "
            "WHERE hp.state IN :debt OR (hp.error_code IN :unremovable AND hp.state <> :absent)"
        )
        .bindparams(
            bindparam("debt", list(DEBT_STATES), expanding=True),
            bindparam("unremovable", list(UNREMOVABLE), expanding=True),
            absent=PatchState.ABSENT.value,
        )
        .columns(observed_at=UTCDateTime)
    ).all()
    hosts: dict[str, dict[str, Any]] = {}
    for host_id, host, patch_id, patch, state, error, observed_at in rows:
        key = state if state in DEBT_STATES else error
        since = _since(conn, host_id, patch_id, state) or observed_at
        entry = hosts.setdefault(host, {"host": host, "since": since, "reasons": []})
        entry["reasons"].append({"patch": patch, "state": state, "why": WHY[key].format(patch=patch), "since": since})
        entry["since"] = min(entry["since"], since)
    out = sorted(hosts.values(), key=lambda h: (h["since"], h["host"]))
    return out if limit is None else out[:limit]


def _since(conn: Connection, host_id: int, patch_id: int, state: str) -> datetime | None:
    """When the host patch last entered `state` (its first event in the state after one in another)."""
    events = conn.execute(
        text(
            "SELECT at, details FROM events WHERE host_id = :host AND patch_id = :patch AND kind = 'patch.state' "
            "ORDER BY at DESC, id DESC LIMIT 200"
        )
        .bindparams(host=host_id, patch=patch_id)
        .columns(at=UTCDateTime)
    ).all()
    since = None
    for at, details in events:
        to = (details if isinstance(details, dict) else _json(details)).get("to")
        if to != state:
            break
        since = at
    return since


def _json(raw: Any) -> dict[str, Any]:
    import json

    try:
        value = json.loads(raw) if isinstance(raw, (str, bytes)) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
