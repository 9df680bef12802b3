"""Recording what was observed about a patch on a host: one upsert of host_patches plus an event.

The Ansible recorder, the probe and the controller all write host patch state through here, so the
state row and the audit trail can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from klpfleet.db import events
from klpfleet.db.models import Event, Host, HostPatch, Patch, utcnow
from klpfleet.names import sysfs_functions
from klpfleet.states import PatchState


@dataclass
class PatchObservation:
    state: PatchState
    enabled: bool | None = None
    transition: bool | None = None
    stack_order: int | None = None
    replace: bool | None = None
    objects: dict[str, bool] = field(default_factory=dict)
    functions: dict[str, list[str]] = field(default_factory=dict)
    outcome: str | None = None
    error_code: str | None = None
    errno: int | None = None
    refused_object: str | None = None
    stalled_tasks: list[dict[str, Any]] = field(default_factory=list)
    host_clean: bool | None = None
    attempted: bool = False  # this observation is the result of an attempt to change the host
    # What the host said beyond the state, kept in the event: what a force pinned, a build mismatch, warnings.
    notes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def in_sysfs(cls, state: PatchState, sysfs: dict[str, Any], host_clean: bool | None = None) -> PatchObservation:
        """A patch as the host's /sys/kernel/livepatch shows it (a gather's or a probe's report of one patch)."""
        return cls(
            state=state,
            enabled=sysfs.get("enabled"),
            transition=sysfs.get("transition"),
            stack_order=sysfs.get("stack_order"),
            replace=sysfs.get("replace"),
            objects=dict(sysfs.get("objects") or {}),
            functions=sysfs_functions(sysfs.get("functions")),
            host_clean=host_clean,
        )


TRACKED = (
    "enabled",
    "transition",
    "stack_order",
    "replace",
    "objects",
    "functions",
    "error_code",
    "errno",
    "refused_object",
    "host_clean",
)


def observe(
    session: Session,
    host: Host,
    patch: Patch,
    seen: PatchObservation,
    *,
    observed_by: str,
    actor: str | None = None,
    rollout_id: int | None = None,
) -> HostPatch:
    row = session.scalar(select(HostPatch).where(HostPatch.host_id == host.id, HostPatch.patch_id == patch.id))
    previous = None
    if row is None:
        row = HostPatch(host_id=host.id, patch_id=patch.id, state=seen.state.value, observed_by=observed_by)
        session.add(row)
    else:
        previous = row.state
    before = {k: getattr(row, k) for k in TRACKED}
    row.state = seen.state.value
    row.enabled, row.transition = seen.enabled, seen.transition
    row.stack_order, row.replace = seen.stack_order, seen.replace
    row.objects = dict(seen.objects)
    row.functions = dict(seen.functions)  # like objects: what sysfs listed with them
    row.error_code, row.errno, row.refused_object = seen.error_code, seen.errno, seen.refused_object
    row.stalled_tasks = list(seen.stalled_tasks)
    row.host_clean = seen.host_clean
    if seen.outcome is not None:
        row.last_outcome = seen.outcome
    if seen.attempted:
        row.attempts = (row.attempts or 0) + 1
    row.observed_at = utcnow()
    row.observed_by = observed_by
    session.flush()

    after = {k: getattr(row, k) for k in TRACKED}
    if previous != row.state or before != after or seen.attempted:
        details: dict[str, Any] = {"from": previous, "to": row.state, "observed_by": observed_by}
        if seen.outcome:
            details["outcome"] = seen.outcome
        for key in ("error_code", "errno", "refused_object", "host_clean"):
            if after[key] is not None:
                details[key] = after[key]
        if seen.stalled_tasks:
            details["stalled_tasks"] = seen.stalled_tasks
        details.update(seen.notes)
        event = events.add(session, "patch.state", actor=actor, host=host, patch=patch, **details)
        event.rollout_id = rollout_id
    return row


def last_loaded(
    session: Session, host_names: list[str], patch_names: list[str] | None = None
) -> dict[tuple[str, str], Any]:
    """(host, patch) -> when klpfleet last loaded the patch there: the events of loads whose outcome was
    `applied` (a gather's events only observe). The order of loads, as klpfleet saw them."""
    query = select(Event.host_name, Event.patch_name, Event.at).where(
        Event.kind == "patch.state",
        Event.host_name.in_(sorted(host_names)),
        Event.details["outcome"].as_string() == "applied",
    )
    if patch_names is not None:
        query = query.where(Event.patch_name.in_(sorted(patch_names)))
    loaded: dict[tuple[str, str], Any] = {}
    for host, patch, at in session.execute(query).all():
        if host is not None and patch is not None:
            key = (host, patch)
            loaded[key] = max(at, loaded.get(key, at))
    return loaded


LOCKDOWN_MODES = ("none", "integrity", "confidentiality")


def module_signatures(value: Any) -> dict[str, Any] | None:
    """A host's report of its module signature policy, or None when it said nothing believable."""
    if not isinstance(value, dict):
        return None
    enforced = value.get("enforced")
    lockdown = value.get("lockdown")
    return {
        "enforced": enforced if isinstance(enforced, bool) else None,
        "lockdown": lockdown if lockdown in LOCKDOWN_MODES else None,
    }
