"""Reboots, as gather and the probe see them: a new boot id, patches reloaded or lost, a kernel release left behind.

Both readers of a host's facts (the recorder's gather path and the probe) call these, so a reboot means the same
thing whichever saw it first:

- the host's boot id changed since it was last seen: a `host.rebooted` event;
- a patch applied before and loaded again at this boot: `applied`, with a `patch.reloaded_at_boot` event when the
  boot loader did it;
- a patch applied before and not loaded now: `lost_at_reboot` (refused when the boot loader's load was refused);
- a patch built for a release the host no longer runs: `superseded`, whatever it was (not drift, not a failure).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from klpfleet.db import events
from klpfleet.db.models import Host, HostPatch, Patch
from klpfleet.hoststate.observations import PatchObservation, observe
from klpfleet.states import PatchState

BOOT_ID_RE = re.compile(r"^[0-9a-fA-F-]{8,64}$")
# States that say the patch runs on the host: after a reboot they are only true if something loaded it again.
RUNNING_STATES = frozenset({PatchState.APPLIED, PatchState.FORCED, PatchState.TRANSITIONING})
# States a patch found loaded again simply leaves: it runs (reloaded at boot, or by hand after all).
BACK_WHEN_LOADED = frozenset({PatchState.LOST_AT_REBOOT, PatchState.SUPERSEDED})
# States a reboot clears by itself: the disabled module a force pinned, an unload in progress.
CLEARED_BY_REBOOT = frozenset({PatchState.PINNED, PatchState.UNLOADING})
EARLIEST_BOOT = 946684800  # 2000-01-01: anything before is not a boot time


def observe_boot(session: Session, host: Host, facts: dict[str, Any], actor: str) -> bool:
    """Record the boot the host reports. True when it rebooted since it was last seen (a boot id recorded earlier
    differs); a host seen for the first time, or one that reports no boot id, did not reboot as far as we know."""
    boot_id = facts.get("boot_id")
    if not isinstance(boot_id, str) or not BOOT_ID_RE.match(boot_id):
        return False
    boot_id = boot_id.lower()
    previous = host.boot_id
    if previous == boot_id:
        return False
    host.boot_id = boot_id
    booted_at = facts.get("booted_at")
    when = None
    if isinstance(booted_at, int) and not isinstance(booted_at, bool) and booted_at > EARLIEST_BOOT:
        when = datetime.fromtimestamp(booted_at, UTC)
    host.booted_at = when
    if previous is None:
        return False
    events.add(
        session,
        "host.rebooted",
        actor=actor,
        host=host,
        previous_boot_id=previous,
        boot_id=boot_id,
        booted_at=when.isoformat() if when else None,
        kernel_release=facts.get("kernel_release"),
        kept_for_boot=(facts.get("boot") or {}).get("kept"),
    )
    return True


def loaded_at_boot(facts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Patch name -> the boot loader's result for it at this boot (empty when it did not run)."""
    results = (facts.get("boot") or {}).get("loaded_at_boot") or []
    return {str(r["name"]): r for r in results if isinstance(r, dict) and isinstance(r.get("name"), str)}


def missing_state(
    state: str, patch_release: str, running_release: str | None, rebooted: bool, at_boot: dict[str, Any] | None
) -> tuple[PatchState, dict[str, Any]] | None:
    """What a patch the host does not show became, with what the event should say; None when no reboot explains
    it (the caller's usual rules apply)."""
    current = PatchState(state)
    if running_release and patch_release != running_release:
        if current in (PatchState.ABSENT, PatchState.SUPERSEDED):
            return None
        return PatchState.SUPERSEDED, {"kernel_release": running_release}
    if not rebooted:
        return None
    if current in CLEARED_BY_REBOOT:
        return PatchState.ABSENT, {"cleared_by_reboot": True}
    if current not in RUNNING_STATES:
        return None
    if at_boot and at_boot.get("outcome") == "refused":
        return PatchState.REFUSED, {"at_boot": True}
    notes: dict[str, Any] = {}
    if at_boot:
        notes.update(boot_error=at_boot.get("klp_error"), boot_msg=str(at_boot.get("msg") or "")[:500])
    return PatchState.LOST_AT_REBOOT, notes


def record_reloaded(session: Session, host: Host, patch: Any, at_boot: dict[str, Any], actor: str) -> None:
    events.add(
        session,
        "patch.reloaded_at_boot",
        actor=actor,
        host=host,
        patch=patch,
        boot_id=host.boot_id,
        outcome=at_boot.get("outcome"),
        seconds=at_boot.get("seconds"),
    )


def observe_missing(
    session: Session,
    host: Host,
    patch: Patch,
    row: HostPatch,
    after_boot: tuple[PatchState, dict[str, Any]],
    at_boot: dict[str, Any] | None,
    observed_by: str,
    actor: str,
) -> None:
    """Record what missing_state decided. A patch lost at a reboot left nothing behind (the kernel started
    afresh); a refusal at boot carries the boot loader's errno and object."""
    state, notes = after_boot
    seen = PatchObservation(state=state, host_clean=True, notes=notes)
    if state == PatchState.REFUSED and at_boot:
        seen.error_code = "refused"
        seen.errno = at_boot.get("errno") if isinstance(at_boot.get("errno"), int) else None
        seen.refused_object = at_boot.get("refused_object")
    elif state == PatchState.SUPERSEDED:
        seen.host_clean = row.host_clean
    observe(session, host, patch, seen, observed_by=observed_by, actor=actor)
