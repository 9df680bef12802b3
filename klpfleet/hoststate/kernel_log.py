"""What a host's kernel log says beyond each patch's state: target-module loads a patch refused (one event per log
record, whoever reported it: a gather, a rollout's module, the probe), and a stack order its witnesses disagree on."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from klpfleet.db import events
from klpfleet.db.models import Event, Host
from klpfleet.hoststate.lookups import find_patch
from klpfleet.hoststate.observations import last_loaded


def record_refusals(s: Session, host: Host, facts: dict[str, Any], actor: str) -> None:
    """The refused loads a report lists; what is already recorded is read once per report, so a report of many
    refusals is not quadratic."""
    refusals = [r for r in facts.get("refused_module_loads") or [] if isinstance(r, dict)]
    if not refusals:
        return
    seen = _refusals_seen(s, host)
    for refusal in refusals:
        _record_refusal(s, host, refusal, seen, actor)


def _record_refusal(
    s: Session, host: Host, refusal: dict[str, Any], seen: set[tuple[Any, Any, Any]], actor: str
) -> None:
    """A target-module load a patch refused (found in the kernel log): one event per log record."""
    patch_name, module, seq = refusal.get("patch"), refusal.get("module"), refusal.get("seq")
    key = (patch_name, str(module), str(seq))
    if key in seen:
        return
    seen.add(key)
    patch = find_patch(s, host, patch_name, None)
    events.add(
        s,
        "module.load_refused",
        actor=actor,
        host=host,
        patch=patch,
        patch_name=str(patch_name),
        module=module,
        seq=seq,
        seconds_since_boot=refusal.get("seconds_since_boot"),
    )


def _refusals_seen(s: Session, host: Host) -> set[tuple[Any, Any, Any]]:
    rows = s.execute(
        select(Event.patch_name, Event.details).where(Event.host_id == host.id, Event.kind == "module.load_refused")
    ).all()
    return {(p, str(d.get("module")), str(d.get("seq"))) for p, d in rows if isinstance(d, dict)}


def check_stack_order(s: Session, host: Host, facts: dict[str, Any], actor: str) -> None:
    """Three witnesses of the stack order: the host's (sysfs, else module load order), its kernel log, and the
    order in which klpfleet loaded the patches (the events of loads that applied them; a gather's events
    only observe). An event when they disagree (once per finding)."""
    patches = [p for p in facts.get("patches") or [] if isinstance(p, dict) and isinstance(p.get("name"), str)]
    on_host = [str(p["name"]) for p in sorted(patches, key=lambda p: p.get("stack_order") or 0)]
    applied_at = {patch: at for (_host, patch), at in last_loaded(s, [host.name], on_host).items()}
    known = [n for n in on_host if n in applied_at]
    recorded = sorted(known, key=lambda n: applied_at[n])
    if known == recorded and not facts.get("stack_order_conflict"):
        return
    finding: dict[str, Any] = {
        "host_order": known if known != recorded else on_host,
        "recorded_order": recorded if known != recorded else None,
        "kernel_log_disagrees": bool(facts.get("stack_order_conflict")),
        "source": facts.get("stack_order_source"),
    }
    last = s.scalars(
        select(Event.details)
        .where(Event.host_id == host.id, Event.kind == "host.stack_order_conflict")
        .order_by(Event.id.desc())
    ).first()
    if last != finding:
        events.add(s, "host.stack_order_conflict", actor=actor, host=host, **finding)
