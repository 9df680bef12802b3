"""Removing a patch from hosts in the right order, knowing what the kernel stacked on top of it.

Each batch of hosts is read fresh (patch_info) before anything is removed. Per host:
- the patch is not enabled there (replaced by a cumulative patch, or already gone): nothing to remove;
- patches enabled after it sit on top (a stack, not a replace): refused unless cascade, which removes
  the newer ones first, newest first (the only order that is right on every kernel and never exposes
  an untested combination);
- otherwise it is removed. A patch a forced transition pinned is disabled like any other (its code stops
  running, through the kernel's consistency model); its module stays loaded until reboot, which the answer
  says (`pinned`). Which patches a force pins depends on the kernel generation (docs/kernel.md), so the
  removal's result decides, not a guess made beforehand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from klpfleet.controller.health import health_checks
from klpfleet.controller.playbook import run_playbook
from klpfleet.db.models import Host, HostPatch, Patch, Rollout, Wave, WaveHost
from klpfleet.hoststate.observations import last_loaded
from klpfleet.inventory.export import fleet_inventory
from klpfleet.runs.types import HostResult, RunRequest
from klpfleet.runs.variables import patch_vars
from klpfleet.states import PatchState

REMOVED, NOTHING, STACKED, FAILED, UNREACHABLE = (
    "removed",
    "nothing_to_remove",
    "stacked",
    "failed",
    "unreachable",
)


@dataclass
class HostRollback:
    host: str
    result: str
    detail: str = ""
    removed: list[str] = field(default_factory=list)
    klp_error: str | None = None
    pinned: list[str] = field(default_factory=list)  # removed, but their modules stay loaded until reboot


def decide(
    host: str, facts: dict[str, Any], patch_name: str, cascade: bool, registered: set[str] | None = None
) -> tuple[HostRollback | None, list[str]]:
    """(a final answer, or None and the patch names to remove in order). The names come from the host's own
    report, so a name is removed only when it is a registered patch's (`registered`): a host cannot make the
    controller run anything of its choosing, and a report that had names no kernel module can have (the
    sanitizer dropped them) leaves the host untouched."""
    if "patches" in (facts.get("klp_sanitized") or []):
        return HostRollback(
            host, FAILED, "the host reported patch names that are not kernel module names; nothing was removed"
        ), []
    stack = [p.get("name") for p in facts.get("patches") or []]
    pinned = {p.get("name") for p in facts.get("forced_modules") or []}
    if patch_name not in stack:
        detail = "not enabled here"
        if patch_name in pinned:
            detail = "already disabled; a forced transition keeps its module loaded until reboot"
        elif stack:
            detail += f" (enabled now: {', '.join(map(str, stack))}; a cumulative patch may have replaced it)"
        return HostRollback(host, NOTHING, detail), []
    newer = stack[stack.index(patch_name) + 1 :]
    if newer and not cascade:
        return HostRollback(
            host,
            STACKED,
            f"newer patches on top: {', '.join(map(str, newer))} (use --cascade to remove them first, newest first)",
        ), []
    unknown = [str(n) for n in newer if registered is not None and n not in registered]
    if unknown:
        return HostRollback(
            host,
            STACKED,
            f"newer patches on top that are not registered: {', '.join(unknown)} (--cascade removes registered "
            "patches only: `klpfleet patch add` them, or remove them by hand first)",
        ), []
    return None, [*reversed(newer), patch_name]


def replaced_patches(session: Session, patch: Patch, hosts: set[str]) -> dict[str, str]:
    """host -> the patch `patch` replaced there, where the database shows one: the patch most recently seen
    applied on the host (same kernel release) that is now absent although nothing removed it. Removing a
    cumulative patch leaves no livepatch at all (the kernel freed what it replaced); this is what to load
    instead."""
    applied_at = last_loaded(session, sorted(hosts))
    rows = session.execute(
        select(Host.name, Patch.name)
        .join(HostPatch, HostPatch.host_id == Host.id)
        .join(Patch, Patch.id == HostPatch.patch_id)
        .where(
            Host.name.in_(sorted(hosts)),
            Patch.id != patch.id,
            Patch.kernel_release == patch.kernel_release,
            HostPatch.state == PatchState.ABSENT.value,
            HostPatch.last_outcome.in_(["applied", "already_applied"]),  # gone, and klpfleet never removed it
        )
    ).all()
    mine = {host: applied_at.get((host, patch.name)) for host in hosts}
    found: dict[str, tuple[Any, str]] = {}
    for host, name in rows:
        at, since = applied_at.get((host, name)), mine.get(host)
        if at is None or (since is not None and at > since):
            continue
        if host not in found or at > found[host][0]:
            found[host] = (at, name)
    return {host: name for host, (_at, name) in found.items()}


def is_cumulative(session: Session, patch: Patch, replaced: dict[str, str]) -> bool:
    """The kernel says so (`replace`, 6.11+), or the database saw it replace another patch."""
    flagged = session.scalar(select(HostPatch.id).where(HostPatch.patch_id == patch.id, HostPatch.replace.is_(True)))
    return flagged is not None or bool(replaced)


def batch_order(session: Session, patch_id: int, hosts: set[str], rollout_id: int | None = None) -> list[list[str]]:
    """The order to take a patch off hosts: the reverse of the waves that applied it, so the last hosts to
    get it lose it first and the canary keeps it longest. Only `rollout_id`'s waves count when given (a
    rollout rolling itself back); otherwise the newest rollout of the patch that reached each host. Hosts no
    rollout applied it to (by hand, another tool) come first: nothing vouches for them."""
    query = (
        select(Host.name, Wave.index)
        .join(WaveHost, WaveHost.host_id == Host.id)
        .join(Wave, Wave.id == WaveHost.wave_id)
        .join(Rollout, Rollout.id == Wave.rollout_id)
        .where(Rollout.patch_id == patch_id, Host.name.in_(sorted(hosts)))
        .order_by(Rollout.id)
    )
    if rollout_id is not None:
        query = query.where(Rollout.id == rollout_id)
    wave_of: dict[str, int] = dict(session.execute(query).all())
    unvouched = sorted(h for h in hosts if h not in wave_of)
    by_wave: dict[int, list[str]] = {}
    for host in sorted(wave_of):
        by_wave.setdefault(wave_of[host], []).append(host)
    return [b for b in [unvouched, *(by_wave[i] for i in sorted(by_wave, reverse=True))] if b]


def rollback_batches(
    base: RunRequest,
    patch_name: str,
    batches: list[list[str]],
    *,
    cascade: bool = False,
    health_check: list[str] | None = None,
    bake_seconds: float = 0.0,
    transition_timeout: float = 60.0,
    on_batch: Callable[[int, list[HostRollback]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[HostRollback]:
    """Remove `patch_name` batch by batch (each run with `base`'s settings): read the batch, decide per host from
    its live stack, remove in order, health-check, bake."""
    db = base.db
    done: list[HostRollback] = []
    with db.session() as s:
        registered = set(s.scalars(select(Patch.name).distinct()))
    for n, batch in enumerate(b for b in batches if b):
        records = {r["name"]: r for r in fleet_inventory(db, batch)}
        facts_run = run_playbook(base.run("gather.yml", list(records.values()), {}, f"b{n}-gather"))
        answers: dict[str, HostRollback] = {}
        plans: dict[str, list[str]] = {}
        for host in batch:
            r = facts_run.results[host]
            if r.status != "ok":
                answers[host] = _failed(host, r)
                continue
            answer, sequence = decide(host, r.result, patch_name, cascade, registered)
            if answer is not None:
                answers[host] = answer
            else:
                plans[host] = sequence
        _remove_in_order(base, f"b{n}", records, plans, answers, transition_timeout)
        if health_check:
            healthy = [h for h, a in answers.items() if a.result == REMOVED]
            if healthy:
                check = health_checks(db, healthy, health_check, forks=base.forks)
                for host in healthy:
                    if check[host].status != "ok":
                        answers[host].detail = f"removed, but the health check failed: {_msg(check[host])}"
        batch_answers = [answers[h] for h in batch]
        done.extend(batch_answers)
        if on_batch is not None:
            on_batch(n, batch_answers)
        if bake_seconds and n < len(batches) - 1:
            sleep(bake_seconds)
    return done


def restore_batches(
    base: RunRequest,
    patch_name: str,
    previous: Patch,
    batches: list[list[str]],
    *,
    transition_timeout: float = 60.0,
    on_batch: Callable[[int, list[HostRollback]], None] | None = None,
) -> list[HostRollback]:
    """Roll a cumulative patch back to the one it replaced: load `previous` first (a cumulative patch replaces
    the current one atomically, so the host is never without a livepatch), then remove what is left of
    `patch_name` (its freed module). A host where `previous` fails keeps `patch_name`."""
    done: list[HostRollback] = []
    restore_vars = {**patch_vars(previous.name, previous.sha256), "klp_transition_timeout": transition_timeout}
    for n, batch in enumerate(b for b in batches if b):
        records = {r["name"]: r for r in fleet_inventory(base.db, batch)}
        applied = run_playbook(
            base.run("apply.yml", list(records.values()), restore_vars, f"b{n}-apply-{previous.name}")
        )
        answers = {h: _failed(h, applied.results[h]) for h in batch if applied.results[h].status != "ok"}
        ready = [h for h in batch if h not in answers]  # a host where `previous` failed keeps `patch_name`
        plans = {h: [patch_name] for h in ready}
        _remove_in_order(base, f"b{n}", records, plans, answers, transition_timeout)
        for host in ready:
            answers[host].detail = f"{previous.name} applied in its place" + (
                f"; {answers[host].detail}" if answers[host].detail else ""
            )
        batch_answers = [answers[h] for h in batch]
        done.extend(batch_answers)
        if on_batch is not None:
            on_batch(n, batch_answers)
    return done


def _remove_in_order(
    base: RunRequest,
    batch: str,
    records: dict[str, dict[str, Any]],
    plans: dict[str, list[str]],
    answers: dict[str, HostRollback],
    transition_timeout: float,
) -> None:
    """Remove each host's planned patches in order, one remove.yml run per patch and step, answering per host:
    removed (and which modules a forced transition left loaded until reboot), or the first failure."""
    step = 0
    while plans:
        by_name: dict[str, list[str]] = {}
        for host, sequence in plans.items():
            by_name.setdefault(sequence[0], []).append(host)
        for name, hosts in sorted(by_name.items()):
            removal = {"klp_patch_name": name, "klp_transition_timeout": transition_timeout}
            run = run_playbook(base.run("remove.yml", [records[h] for h in hosts], removal, f"{batch}-s{step}-{name}"))
            for host in hosts:
                r = run.results[host]
                if r.status == "ok":
                    answer = answers.setdefault(host, HostRollback(host, REMOVED))
                    answer.removed.append(name)
                    if r.result.get("module_pinned"):
                        answer.pinned.append(name)
                        answer.detail = f"module(s) {', '.join(answer.pinned)} stay loaded until reboot (forced)"
                    plans[host] = plans[host][1:]
                else:
                    answers[host] = _failed(host, r, removed=answers.get(host, HostRollback(host, "")).removed)
                    plans[host] = []
        plans = {h: s for h, s in plans.items() if s}
        step += 1


def _msg(r: HostResult) -> str:
    text = r.result.get("stderr") or r.result.get("msg") or f"rc={r.result.get('rc')}"
    return str(text).strip().splitlines()[-1][:200] if str(text).strip() else r.status


def _failed(host: str, r: HostResult, removed: list[str] | None = None) -> HostRollback:
    if r.status == "unreachable":
        return HostRollback(host, UNREACHABLE, _msg(r), removed or [])
    return HostRollback(host, FAILED, _msg(r), removed or [], r.klp_error)
