"""Reconcile: which hosts should have a patch and do not, and why each one is included.

A host should have patch P when klpfleet applied P there (or tried to) and nobody took it back since: its state
for P says the patch is not running although it was meant to be. Included, with the reason:

- lost_at_reboot: applied, the host rebooted and it was not loaded again;
- drift: the host and the database disagree (rolling the patch out again is idempotent: a host that has it
  answers already_applied);
- refused: a pre-patch callback refused it (the kernel cleaned up); whatever refused may have gone since;
- unreachable: the host could not be reached when it was tried;
- stalled or failed, but only when the host was verified clean afterwards (anything else needs a person).

Excluded: hosts a rollback took P off (their last rollout of P rolled them back, or `klpfleet rollback` removed
it after P's last rollout was planned), every host when the latest word on P is a rollback of the whole fleet
(unless P is asked for by name: `reconcile --patch P`), hosts that are not on P's kernel release (superseded: P
cannot load there), every host of a blocked patch (`klpfleet patch block`), and everything the ordinary rollout
plan excludes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from klpfleet.controller.plan import NoEligibleHost, create_rollout, make_plan, plan_record
from klpfleet.controller.policy import Policy
from klpfleet.db.engine import Database
from klpfleet.db.models import Event, Host, HostPatch, Patch, Rollout, WaveHost
from klpfleet.registry.blocks import block_sentence
from klpfleet.registry.patches import get_patch
from klpfleet.states import ACTIVE_ROLLOUT_STATUSES, PatchState, WaveHostStatus

RETRIED_STATES = {
    PatchState.LOST_AT_REBOOT: "applied before a reboot, not loaded after it",
    PatchState.DRIFT: "the host and the database disagree",
    PatchState.REFUSED: "refused earlier by a pre-patch callback",
    PatchState.UNREACHABLE: "unreachable when it was tried",
    PatchState.STALLED: "its transition stalled earlier (reversed, host verified clean)",
    PatchState.FAILED: "failed earlier (host verified clean)",
}
NEEDS_CLEAN_HOST = frozenset({PatchState.STALLED, PatchState.FAILED})


@dataclass
class Candidates:
    patch: Patch
    included: dict[str, str] = field(default_factory=dict)  # host -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # host -> why not


def candidates(session: Session, patch: Patch, names: list[str], by_name: bool = False) -> Candidates:
    found = Candidates(patch)
    selected = set(names)
    withdrawn, everywhere = _withdrawn(session, patch)
    rows = session.execute(
        select(Host.name, Host.kernel_release, HostPatch.state, HostPatch.host_clean, HostPatch.error_code)
        .join(HostPatch, HostPatch.host_id == Host.id)
        .where(HostPatch.patch_id == patch.id, HostPatch.state.in_([s.value for s in RETRIED_STATES]))
        .order_by(Host.name)
    ).all()
    rolled_back = _rolled_back(session, patch)
    blocked = block_sentence(patch) if patch.blocked_at is not None else None
    for host, release, state, clean, error in rows:
        if host not in selected:
            continue
        kind = PatchState(state)
        if blocked:
            found.skipped[host] = blocked
        elif host in rolled_back or host in withdrawn:
            found.skipped[host] = "a rollback took the patch off this host"
        elif everywhere and not by_name:
            found.skipped[host] = f"{everywhere}: reconcile --patch {patch.name} to put it back anyway"
        elif release != patch.kernel_release:
            found.skipped[host] = f"runs {release}, the patch is built for {patch.kernel_release}"
        elif kind in NEEDS_CLEAN_HOST and not clean:
            found.skipped[host] = f"{state} ({error or 'no error code'}) and not verified clean: inspect it first"
        else:
            found.included[host] = f"{state}: {RETRIED_STATES[kind]}"
    return found


def _rolled_back(session: Session, patch: Patch) -> set[str]:
    """Hosts whose latest rollout of the patch rolled them back."""
    latest: dict[str, tuple[int, str]] = {}
    for host, rollout_id, status in session.execute(
        select(Host.name, WaveHost.rollout_id, WaveHost.status)
        .join(WaveHost, WaveHost.host_id == Host.id)
        .join(Rollout, Rollout.id == WaveHost.rollout_id)
        .where(Rollout.patch_id == patch.id)
    ):
        if host not in latest or rollout_id > latest[host][0]:
            latest[host] = (rollout_id, status)
    return {h for h, (_, status) in latest.items() if status == WaveHostStatus.ROLLED_BACK}


def _withdrawn(session: Session, patch: Patch) -> tuple[set[str], str | None]:
    """What `klpfleet rollback` took off since the patch's last rollout was planned: (hosts it removed it from,
    a reason when it was rolled back from the whole fleet)."""
    last_plan = session.scalar(
        select(Event.id)
        .where(Event.kind == "rollout.planned", Event.patch_id == patch.id)
        .order_by(Event.id.desc())
        .limit(1)
    )
    query = select(Event).where(Event.kind == "patch.rollback", Event.patch_id == patch.id)
    if last_plan is not None:
        query = query.where(Event.id > last_plan)
    hosts: set[str] = set()
    everywhere = None
    for event in session.scalars(query.order_by(Event.id)):
        hosts.update((event.details or {}).get("results") or {})
        if (event.details or {}).get("selector") == "all":
            everywhere = f"rolled back from the whole fleet ({event.at:%Y-%m-%d %H:%M}Z by {event.actor})"
    return hosts, everywhere


def patches_to_reconcile(session: Session) -> list[Patch]:
    """Every patch some host is in a retried state for, oldest registration first."""
    ids = select(HostPatch.patch_id).where(HostPatch.state.in_([s.value for s in RETRIED_STATES])).distinct()
    return list(session.scalars(select(Patch).where(Patch.id.in_(ids)).order_by(Patch.added_at, Patch.id)))


def plan_reconcile(
    db: Database,
    patch_ref: str | None,
    names: list[str],
    policy: Policy,
    selector: str,
    dry_run: bool,
    tried: set[tuple[str, str]] | None = None,
    *,
    preflight: bool = True,
    require_replace: bool = False,
) -> list[dict[str, Any]]:
    """One rollout per patch with candidates; a host goes into the first patch's rollout that wants it, the next
    reconcile (or the --wait loop) plans the rest. `tried` holds the (host, sha256) pairs this invocation already
    planned: each is attempted once, so a host that keeps refusing ends the loop instead of feeding it."""
    planned: list[dict[str, Any]] = []
    with db.session.begin() as s:
        patches = [get_patch(s, patch_ref)] if patch_ref else patches_to_reconcile(s)
        held = dict(
            s.execute(
                select(Host.name, Rollout.id)
                .join(WaveHost, WaveHost.host_id == Host.id)
                .join(Rollout, Rollout.id == WaveHost.rollout_id)
                .where(Rollout.status.in_([st.value for st in ACTIVE_ROLLOUT_STATUSES]))
            ).all()
        )
        for patch in patches:
            found = candidates(s, patch, names, by_name=patch_ref is not None)
            for host in [h for h in found.included if h in held]:
                del found.included[host]
                found.skipped[host] = f"held by rollout {held[host]}: reconcile again once it ends"
            for host in [h for h in found.included if tried is not None and (h, patch.sha256) in tried]:
                del found.included[host]
                found.skipped[host] = "already tried by this reconcile: run it again to retry"
            record: dict[str, Any] = {
                "patch": patch.name,
                "sha256": patch.sha256,
                "hosts": [{"host": h, "reason": r} for h, r in sorted(found.included.items())],
                "skipped": [{"host": h, "reason": r} for h, r in sorted(found.skipped.items())],
                "rollout": None,
            }
            if found.included and not dry_run:
                try:
                    plan = make_plan(
                        s, patch, sorted(found.included), policy, preflight=preflight, require_replace=require_replace
                    )
                except NoEligibleHost as nobody:  # the pre-flight left every candidate out: nothing to plan
                    record["hosts"] = []
                    record["skipped"] += [{"host": h, "reason": r} for h, r in sorted(nobody.excluded.items())]
                    planned.append(record)
                    continue
                row = create_rollout(s, patch, plan, policy, selector)
                record.update(rollout=row.id, **plan_record(plan))
                held.update(dict.fromkeys([h for wave in plan.waves for h in wave], row.id))
            planned.append(record)
    return planned
