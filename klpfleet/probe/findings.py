"""What the probe found, written to the database: observed state, reachability, and drift.

Drift is any disagreement between what the database expected and what the host reports: a patch
expected applied but absent (removed by hand), a patch loaded that the database did not expect, a patch
nobody registered. Each is an event; the host patch state becomes `drift` until a gather or a rollout
records the truth again. A reboot is not drift: klpfleet.hoststate.boots says what it did to each patch
(lost_at_reboot, reloaded, superseded by another kernel release).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from klpfleet.db import events
from klpfleet.db.models import Host, HostPatch, Patch, utcnow
from klpfleet.hoststate import boots
from klpfleet.hoststate.kernel_log import record_refusals
from klpfleet.hoststate.module_results import sanitize
from klpfleet.hoststate.observations import PatchObservation, module_signatures, observe
from klpfleet.names import valid_kernel_release
from klpfleet.probe.ssh import OK, TIMEOUT, UNREACHABLE, RunResult
from klpfleet.states import PatchState, stored_state

PRESENT = (PatchState.APPLIED, PatchState.FORCED, PatchState.TRANSITIONING)


@dataclass
class HostProbe:
    host: str
    status: str
    error: str | None = None
    kernel_release: str | None = None
    patches: list[str] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    refused_module_loads: int = 0
    rebooted: bool = False
    kernel_changed: dict[str, Any] | None = None
    accepted_key: str | None = None
    seconds: float = 0.0


def write_findings(session: Session, host: Host, run: RunResult, facts: dict[str, Any] | None, actor: str) -> HostProbe:
    found = HostProbe(host.name, run.status, run.error, accepted_key=run.accepted_key, seconds=run.seconds)
    if run.accepted_key:
        events.add(session, "probe.host_key_accepted", actor=actor, host=host, key=run.accepted_key)
    if run.status != OK or facts is None:
        if run.status in (UNREACHABLE, TIMEOUT):
            host.reachable = False
        events.add(session, f"probe.{run.status}", actor=actor, host=host, error=run.error)
        return found
    host.reachable, host.last_seen = True, utcnow()
    facts = sanitize(facts)  # what the host says is bounded and its names checked before anything reads it
    release = facts.get("kernel_release")
    if release is not None and not valid_kernel_release(release):
        events.add(
            session, "host.bad_report", actor=actor, host=host, field="kernel_release", value=repr(release)[:200]
        )
        release = host.kernel_release
    found.kernel_release = release
    if host.kernel_release and release != host.kernel_release:
        found.kernel_changed = {"previous": host.kernel_release, "current": release}
        events.add(session, "host.kernel_changed", actor=actor, host=host, **found.kernel_changed)
    host.kernel_release = release
    host.livepatch_supported = facts.get("livepatch_supported")
    host.module_signatures = module_signatures(facts.get("signatures"))
    found.rebooted = boots.observe_boot(session, host, facts, actor)
    at_boot = boots.loaded_at_boot(facts) if found.rebooted else {}

    sysfs = {p["name"]: p for p in facts.get("patches") or []}
    lingering = {p["name"] for p in facts.get("forced_modules") or []}
    found.patches = sorted(sysfs)
    rows = {hp.patch_id: hp for hp in session.scalars(select(HostPatch).where(HostPatch.host_id == host.id))}
    seen_names: set[str] = set()
    for patch_id, row in rows.items():
        patch = session.get(Patch, patch_id)
        if patch is None:
            continue
        on_host = sysfs.get(patch.name)
        if on_host is not None:
            seen_names.add(patch.name)
        expected = stored_state(row.state) in PRESENT
        present = on_host is not None
        after_boot = None
        if not present:
            after_boot = boots.missing_state(
                row.state, patch.kernel_release, release, found.rebooted, at_boot.get(patch.name)
            )
        elif patch.name in at_boot:
            boots.record_reloaded(session, host, patch, at_boot[patch.name], actor)
        if after_boot is not None:
            boots.observe_missing(session, host, patch, row, after_boot, at_boot.get(patch.name), "probe", actor)
        elif present and stored_state(row.state) in boots.BACK_WHEN_LOADED:
            observe(
                session, host, patch, _seen(PatchState.APPLIED, on_host or {}, row), observed_by="probe", actor=actor
            )
        elif row.state == PatchState.PINNED and not present and patch.name not in lingering:
            # The reboot the pinned module waited for: gone, as expected.
            observe(session, host, patch, PatchObservation(state=PatchState.ABSENT), observed_by="probe", actor=actor)
        elif expected and not present:
            found_as = "disabled, its module pinned by a forced transition" if patch.name in lingering else "absent"
            _drift(session, host, patch, row, found, actor, f"expected applied, found {found_as}")
        elif present and not expected and row.state != PatchState.DRIFT:
            _drift(session, host, patch, row, found, actor, f"expected {row.state}, found loaded", on_host)
        elif on_host is not None and row.state != PatchState.DRIFT:
            observe(
                session, host, patch, _seen(stored_state(row.state), on_host, row), observed_by="probe", actor=actor
            )
    for name in sorted(set(sysfs) - seen_names):
        registered = session.scalar(select(Patch).where(Patch.name == name, Patch.kernel_release == release))
        if registered is None:
            found.drift.append({"kind": "unknown_patch", "patch": name})
            continue
        row = HostPatch(host_id=host.id, patch_id=registered.id, state=PatchState.DRIFT.value, observed_by="probe")
        _drift(session, host, registered, row, found, actor, "not expected here, found loaded", sysfs[name])
    for d in found.drift:
        if d["kind"] == "unknown_patch":
            events.add(session, "drift.unknown_patch", actor=actor, host=host, patch_name=d["patch"])
    record_refusals(session, host, facts, actor)
    found.refused_module_loads = len(facts.get("refused_module_loads") or [])
    return found


def _seen(state: PatchState, on_host: dict[str, Any], row: HostPatch) -> PatchObservation:
    return PatchObservation.in_sysfs(state, on_host, row.host_clean)


def _drift(
    session: Session,
    host: Host,
    patch: Patch,
    row: HostPatch,
    found: HostProbe,
    actor: str,
    what: str,
    on_host: dict[str, Any] | None = None,
) -> None:
    """A patch whose state on the host is not what klpfleet expected. One found loaded keeps what sysfs showed
    of it (enabled, objects, functions): the kernel has it, whatever klpfleet expected (the pre-flight and the
    function map count it)."""
    found.drift.append({"kind": "patch_state", "patch": patch.name, "expected": row.state, "found": what})
    events.add(session, "drift.patch_state", actor=actor, host=host, patch=patch, expected=row.state, found=what)
    seen = (
        PatchObservation.in_sysfs(PatchState.DRIFT, on_host, row.host_clean)
        if on_host is not None
        else PatchObservation(state=PatchState.DRIFT, host_clean=row.host_clean)
    )
    observe(session, host, patch, seen, observed_by="probe", actor=actor)
