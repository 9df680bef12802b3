"""Reconcile: which hosts should have a patch and do not, and why each one is included.

A host should have patch P when klpfleet applied P there (or tried to) and nobody took it back since: its state
for P says the patch is not running although it was meant to be. Included, with the reason:

- lost_at_reboot: applied, the host rebooted and it was not loaded again;
- drift: the host and the database disagree (rolling the patch out again is idempotent: a host that has it
  answers already_applied);
- refused: a pre-patch callback refused it (the kernel cleaned up); whatever refused may have gone since;
- unreachable: the host could not be reached when it was tried;
- stalled or failed, but only when the host was verified clean afterwards (anything else needs a person).

Excluded: hosts a rollback took P off (their last rollout of P rolled them back), hosts that are not on P's
kernel release (superseded: P cannot load there), and everything the ordinary rollout plan excludes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from klpfleet.db.models import Host, HostPatch, Patch, Rollout, WaveHost
from klpfleet.states import PatchState, WaveHostStatus

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


def candidates(session: Session, patch: Patch, names: list[str]) -> Candidates:
    found = Candidates(patch)
    selected = set(names)
    rows = session.execute(
        select(Host.name, Host.kernel_release, HostPatch.state, HostPatch.host_clean, HostPatch.error_code)
        .join(HostPatch, HostPatch.host_id == Host.id)
        .where(HostPatch.patch_id == patch.id, HostPatch.state.in_([s.value for s in RETRIED_STATES]))
        .order_by(Host.name)
    ).all()
    rolled_back = _rolled_back(session, patch)
    for host, release, state, clean, error in rows:
        if host not in selected:
            continue
        kind = PatchState(state)
        if host in rolled_back:
            found.skipped[host] = "a rollback took the patch off this host"
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


def patches_to_reconcile(session: Session) -> list[Patch]:
    """Every patch some host is in a retried state for, oldest registration first."""
    ids = select(HostPatch.patch_id).where(HostPatch.state.in_([s.value for s in RETRIED_STATES])).distinct()
    return list(session.scalars(select(Patch).where(Patch.id.in_(ids)).order_by(Patch.added_at, Patch.id)))
