"""An operator's rollback of one patch (`klpfleet rollback`): which hosts, in which batches, and whether removing
it is allowed at all. A cumulative (replace) patch freed the patches it replaced, so removing it leaves no
livepatch: refused unless the operator names the patch to load in its place (`--to`) or says that is the intent."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from klpfleet.controller.rollback import (
    HostRollback,
    batch_order,
    is_cumulative,
    replaced_patches,
    restore_batches,
    rollback_batches,
)
from klpfleet.db import events
from klpfleet.db.engine import Database
from klpfleet.db.models import Host, HostPatch, Patch
from klpfleet.errors import UsageError
from klpfleet.registry.blocks import refuse_if_blocked
from klpfleet.registry.patches import get_patch
from klpfleet.runs.engine import Engine
from klpfleet.runs.types import RunRequest, runs_dir
from klpfleet.states import PatchState
from klpfleet.wording import counted

# States in which a patch may still be on a host: what a rollback tries to remove.
ON_HOST = (PatchState.APPLIED, PatchState.FORCED, PatchState.TRANSITIONING, PatchState.STALLED, PatchState.DRIFT)


@dataclass
class RollbackPlan:
    patch_ref: str  # as the operator named it
    patch_name: str
    hosts: set[str]
    batches: list[list[str]]  # the reverse of the waves that applied it
    previous: Patch | None  # loaded in its place first (--to), detached from the session


def plan_rollback(
    db: Database, patch_ref: str, chosen: set[str] | None, previous_ref: str | None, allow_unpatched: bool
) -> RollbackPlan:
    """The hosts (of `chosen`, if given) the patch is recorded on, batched; UsageError when there are none, when
    `previous_ref` is not another patch for the same kernel, or when the cumulative rule forbids it."""
    with db.session() as s:
        patch = get_patch(s, patch_ref)
        on = _hosts_with(s, patch)
        hosts = on if chosen is None else on & chosen
        if not hosts:
            raise UsageError(f"{patch.name} is not recorded as applied on any selected host (gather first?)")
        batches = batch_order(s, patch.id, hosts)
        previous = get_patch(s, previous_ref) if previous_ref else None
        if previous is not None:
            if previous.kernel_release != patch.kernel_release or previous.id == patch.id:
                raise UsageError(f"--to {previous_ref}: not another patch for kernel {patch.kernel_release}")
            refuse_if_blocked(previous)  # --to loads it
            s.expunge(previous)
        elif not allow_unpatched:
            _refuse_if_cumulative(s, patch, hosts)
        return RollbackPlan(patch_ref, patch.name, hosts, batches, previous)


def _hosts_with(s: Session, patch: Patch) -> set[str]:
    return set(
        s.scalars(
            select(Host.name)
            .join(HostPatch, HostPatch.host_id == Host.id)
            .where(HostPatch.patch_id == patch.id, HostPatch.state.in_([state.value for state in ON_HOST]))
        )
    )


def _refuse_if_cumulative(s: Session, patch: Patch, hosts: set[str]) -> None:
    replaced = replaced_patches(s, patch, hosts)
    if not is_cumulative(s, patch, replaced):
        return
    hint = sorted(set(replaced.values()))
    instead = (
        f"It replaced {', '.join(hint)}: klpfleet rollback {patch.name} --to {hint[0]} (or --allow-unpatched)"
        if hint
        else "Use --allow-unpatched"
    )
    raise UsageError(
        f"{patch.name} is a cumulative (replace) patch: removing it leaves {counted(len(hosts), 'host')} "
        f"with no livepatch at all. {instead}"
    )


def run_rollback(
    db: Database,
    plan: RollbackPlan,
    *,
    forks: int,
    engine: Engine,
    cascade: bool = False,
    health_check: list[str] | None = None,
    bake_seconds: float = 0.0,
    selector: str = "all",
    fast: bool = False,
    on_batch: Callable[[int, list[HostRollback]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[HostRollback]:
    """Carry the plan out (restoring `previous` first when there is one) and record it as one event."""
    name = plan.patch_name
    base = RunRequest(db, "", [], {}, runs_dir(db) / f"rollback-{name}", f"rollback-{name}", forks, engine=engine)
    if plan.previous is not None:
        base = replace(base, ident=f"rollback-{name}-to-{plan.previous.name}")
        answers = restore_batches(base, name, plan.previous, plan.batches, on_batch=on_batch)
    else:
        answers = rollback_batches(
            base,
            name,
            plan.batches,
            cascade=cascade,
            health_check=health_check,
            bake_seconds=bake_seconds,
            on_batch=on_batch,
            sleep=sleep,
        )
    with db.session.begin() as s:
        events.add(
            s,
            "patch.rollback",
            patch=get_patch(s, plan.patch_ref),
            selector=selector,
            cascade=cascade,
            fast=fast,
            to=plan.previous.name if plan.previous is not None else None,
            results={a.host: a.result for a in answers},
        )
    return answers
