"""Rollout records for `rollout status` and `rollout list`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from klpfleet.analysis.measure import transition_seconds, transition_stats
from klpfleet.db.models import Event, Host, HostPatch, Rollout, Wave, WaveHost, utcnow
from klpfleet.errors import UsageError
from klpfleet.reads.views import event_record
from klpfleet.states import counted_as, wave_number


def get_rollout(session: Session, rollout_id: int) -> Rollout:
    r = session.get(Rollout, rollout_id)
    if r is None:
        raise UsageError(f"no rollout {rollout_id} (see `klpfleet rollout list`)")
    return r


def driven(r: Rollout) -> bool:
    """Whether a driver holds the rollout's lease now."""
    return bool(r.lease_owner and r.lease_expires and r.lease_expires > utcnow())


def driver_state(r: Rollout) -> str:
    if driven(r):
        return f"driven by {r.lease_owner}"
    if r.status in ("running", "aborting"):
        return f"no driver: run `klpfleet rollout resume {r.id}`"
    return "idle"


def held_by(session: Session, r: Rollout) -> dict[str, str]:
    """Per host whose transition of this rollout's patch stalled: the first task that held it back, as people read
    it (comm, pid, the top of its stack: the patched function it sleeps in)."""
    rows = session.execute(
        select(Host.name, HostPatch.stalled_tasks)
        .join(HostPatch, HostPatch.host_id == Host.id)
        .join(WaveHost, WaveHost.host_id == Host.id)
        .where(WaveHost.rollout_id == r.id, WaveHost.outcome == "stalled", HostPatch.patch_id == r.patch_id)
    ).all()
    out = {}
    for name, tasks in rows:
        task = next((t for t in tasks or [] if isinstance(t, dict)), None)
        if task is not None:
            top = (task.get("stack") or ["?"])[0]
            out[name] = f"{task.get('comm')} ({task.get('pid')}) in {top}"
    return out


MAX_ANALYSIS_EVENTS = 2000  # the newest analysis events read for one rollout's record


def _wave_of(details: Any) -> int | None:
    wave = details.get("wave") if isinstance(details, dict) else None
    return wave if isinstance(wave, int) and not isinstance(wave, bool) else None


def wave_analyses(session: Session, rollout_id: int) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """Per wave (1-based): its analysis as the events tell it: the latest measurement of each check, and how it
    ended (`measuring` while it runs); and the latest measurement of each background check, which belongs to the
    whole rollout, not to a wave. The events are rows, read as hostile: what does not fit is left out."""
    rows = session.execute(
        select(Event.kind, Event.details)
        .where(
            Event.rollout_id == rollout_id, Event.kind.in_(["analysis.started", "analysis.measured", "analysis.ended"])
        )
        .order_by(Event.id.desc())
        .limit(MAX_ANALYSIS_EVENTS)
    ).all()
    out: dict[int, dict[str, Any]] = {}
    background: dict[str, Any] = {}
    keys = ("wave", "result", "value", "control", "reason")
    for kind, details in reversed(rows):
        wave = _wave_of(details)
        if wave is None:
            continue
        if details.get("background"):
            if kind == "analysis.measured" and isinstance(details.get("check"), str):
                background[details["check"][:64]] = {k: details.get(k) for k in keys}
            continue
        if kind == "analysis.started":
            out[wave] = {"result": "measuring", "reason": None, "checks": {}}
            continue
        entry = out.setdefault(wave, {"result": "measuring", "reason": None, "checks": {}})
        if kind == "analysis.ended":
            entry["result"], entry["reason"] = str(details.get("result"))[:20], details.get("reason")
        elif isinstance(details.get("check"), str):
            entry["checks"][details["check"][:64]] = {k: details.get(k) for k in keys[1:]}
    return out, background


def transition_record(seconds: list[float]) -> dict[str, Any] | None:
    return transition_stats(seconds) if seconds else None


def rollout_record(session: Session, rollout_id: int, event_limit: int = 30) -> dict[str, Any]:
    r = get_rollout(session, rollout_id)
    stalled_by = held_by(session, r)
    analyses, background = wave_analyses(session, r.id)
    waves = []
    for w in r.waves:
        seconds = session.scalars(
            select(WaveHost.transition_seconds).where(
                WaveHost.wave_id == w.id, WaveHost.outcome == "applied", WaveHost.transition_seconds.is_not(None)
            )
        ).all()
        rows = session.execute(
            select(Host.name, WaveHost.status, WaveHost.outcome, WaveHost.error_code, WaveHost.attempts)
            .join(Host, Host.id == WaveHost.host_id)
            .where(WaveHost.wave_id == w.id)
            .order_by(Host.name)
        ).all()
        outcomes: dict[str, int] = {}
        for _, status, outcome, _, _ in rows:
            key = counted_as(status, outcome)
            outcomes[key] = outcomes.get(key, 0) + 1
        waves.append(
            {
                "index": w.index,
                "domain": w.domain,
                "status": w.status,
                "started_at": w.started_at,
                "finished_at": w.finished_at,
                "outcomes": dict(sorted(outcomes.items())),
                "transition": transition_record([x for x in map(transition_seconds, seconds) if x is not None]),
                "analysis": analyses.get(w.index + 1),
                "hosts": [
                    {
                        "host": h,
                        "status": st,
                        "outcome": o,
                        "error_code": e,
                        "attempts": a,
                        "held_by": stalled_by.get(h),
                    }
                    for h, st, o, e, a in rows
                ],
            }
        )
    recent = session.scalars(
        select(Event).where(Event.rollout_id == r.id).order_by(Event.at.desc(), Event.id.desc()).limit(event_limit)
    )
    preflight = [
        {
            "host": e.host_name,
            "excluded": e.kind == "preflight.excluded",
            "verdict": e.details.get("verdict"),
            "klp_error": e.details.get("klp_error"),
            "reasons": [x.get("message") for x in e.details.get("reasons") or [] if isinstance(x, dict)],
        }
        for e in session.scalars(
            select(Event)
            .where(Event.rollout_id == r.id, Event.kind.in_(["preflight.excluded", "preflight.verdict"]))
            .order_by(Event.host_name)
        )
        if isinstance(e.details, dict)
    ]
    return {
        "id": r.id,
        "patch": r.patch.name,
        "sha256": r.patch.sha256,
        "status": r.status,
        "pause_reason": r.pause_reason,
        "current_wave": wave_number(r.status, r.current_wave),
        "selector": r.selector,
        "policy": r.policy,
        "created_by": r.created_by,
        "created_at": r.created_at,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "driver": driver_state(r),
        "driven": driven(r),
        "waves": waves,
        "background_analysis": background,
        # The pre-flight's verdicts at planning: hosts left out (they would refuse) and hosts planned with a warning.
        "preflight": preflight,
        "events": [event_record(e) for e in recent],
    }


def rollout_list(session: Session) -> list[dict[str, Any]]:
    sizes = dict(session.execute(select(WaveHost.rollout_id, func.count()).group_by(WaveHost.rollout_id)).all())
    nwaves = dict(session.execute(select(Wave.rollout_id, func.count()).group_by(Wave.rollout_id)).all())
    return [
        {
            "id": r.id,
            "patch": r.patch.name,
            "status": r.status,
            "hosts": sizes.get(r.id, 0),
            "waves": nwaves.get(r.id, 0),
            "current_wave": wave_number(r.status, r.current_wave),
            "created_at": r.created_at,
            "created_by": r.created_by,
            "pause_reason": r.pause_reason,
        }
        for r in session.scalars(select(Rollout).order_by(Rollout.id.desc()))
    ]
