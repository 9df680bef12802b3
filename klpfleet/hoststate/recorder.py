"""Turning klpfleet.livepatch module results into host patch state, one transaction per result.

The Ansible callback plugin `klpfleet.livepatch.recorder` is a thin adapter over this; the controller
and the probe use the same mapping, so a result means the same thing whoever recorded it.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from klpfleet.db import events
from klpfleet.db.engine import Database
from klpfleet.db.models import AnsibleRun, Event, Host, HostPatch, Patch, utcnow
from klpfleet.hoststate import boots
from klpfleet.hoststate.module_results import sanitize
from klpfleet.hoststate.observations import PatchObservation, last_loaded, observe
from klpfleet.inventory.sources import HOST_NAME_RE
from klpfleet.states import FAILURE_OUTCOME_STATES, PatchState

PATCH_ACTIONS = {"klpfleet.livepatch.patch", "patch"}
INFO_ACTIONS = {"klpfleet.livepatch.patch_info", "patch_info"}
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# What `uname -r` can print. A host reporting anything else (control characters, a terminal escape sequence)
# is not believed: the value is never stored, and an event says what arrived.
KERNEL_RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$")


def valid_kernel_release(value: Any) -> bool:
    return isinstance(value, str) and bool(KERNEL_RELEASE_RE.match(value))


STACK_FRAMES_KEPT = 12


def stalled_task(task: dict[str, Any]) -> dict[str, Any]:
    """What an operator needs about a task that held a transition back: who, and where it sleeps (the top of
    its kernel stack names the patched function)."""
    kept = {k: task.get(k) for k in ("pid", "tid", "comm", "patch_state")}
    stack = task.get("stack")
    kept["stack"] = [str(frame)[:200] for frame in stack[:STACK_FRAMES_KEPT]] if isinstance(stack, list) else []
    return kept


def is_livepatch_action(action: str) -> bool:
    return action in PATCH_ACTIONS or action in INFO_ACTIONS


# Every result of the collection's modules names its module in `klp_module`, so a result that reaches a
# callback under another action (async_status collecting an async task, a wrapper module) is still known.
RESULT_MODULES = {"patch": "klpfleet.livepatch.patch", "patch_info": "klpfleet.livepatch.patch_info"}


def livepatch_action_of(action: str, result: dict[str, Any]) -> str | None:
    if is_livepatch_action(action):
        return action
    return RESULT_MODULES.get(str(result.get("klp_module")))


def _delegation(result: dict[str, Any], delegate_to: Any) -> dict[str, str] | None:
    """With delegate_to, the module ran on (and changed) the delegated host, not the task's host. Ansible
    2.19 hands callbacks only the delegate's connection vars, so what is known of it: its name (when the
    task named it literally) and its ansible_host."""
    delegated = result.get("_ansible_delegated_vars")
    if not isinstance(delegated, dict):
        return None
    names = [delegated.get("ansible_delegated_host"), delegate_to]
    found = {"name": next((n for n in names if isinstance(n, str) and HOST_NAME_RE.match(n)), "")}
    if isinstance(delegated.get("ansible_host"), str):
        found["address"] = delegated["ansible_host"]
    return found


RECORDED_ARGS = ("name", "sha256", "state")


def _clean(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_ansible")}


def _args_of(task_args: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The task's literal arguments, overridden by what the module actually ran with (its `invocation`):
    that is where a loop's or a template's final values are."""
    args = {k: v for k, v in task_args.items() if k in RECORDED_ARGS and isinstance(v, str) and "{{" not in v}
    invoked = (result.get("invocation") or {}).get("module_args")
    if isinstance(invoked, dict):
        args.update({k: v for k, v in invoked.items() if k in RECORDED_ARGS and isinstance(v, str)})
    return args


def task_results(status: str, result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One task's result as (status, result) pairs: a loop's items each count on their own."""
    items = result.get("results")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        return [(status, result)]
    pairs = []
    for item in items:
        if item.get("unreachable"):
            pairs.append(("unreachable", item))
        elif item.get("skipped"):
            continue
        else:
            pairs.append(("failed" if item.get("failed") else "ok", item))
    return pairs


# Result fields worth keeping in the audit trail beside the state (docs/kernel.md, "Kernel generations").
NOTE_KEYS = ("forced", "force_semantics", "module_pinned", "identity", "signaled", "kernel_log_unreadable")


def result_notes(result: dict[str, Any]) -> dict[str, Any]:
    notes = {k: result[k] for k in NOTE_KEYS if result.get(k)}
    if isinstance(result.get("pinned"), list):  # even empty: the force pinned nothing
        notes["pinned"] = [str(name)[:200] for name in result["pinned"][:50]]
    warnings = [str(w)[:500] for w in result.get("warnings") or [] if isinstance(w, str)][:10]
    if warnings:
        notes["warnings"] = warnings
    # The kernel's own lines about this patch during the operation (bounded): what a host view shows.
    lines = [str(line)[:300] for line in result.get("kernel_log") or [] if isinstance(line, str)][-30:]
    if lines:
        notes["kernel_log"] = lines
    return notes


class Recorder:
    def __init__(self, db: Database, actor: str | None = None) -> None:
        self.db = db
        self.actor = actor or f"ansible:{events.default_actor()}"

    # ------------------------------------------------------------------ runs

    def start_run(self, playbook: str, ident: str | None = None, rollout_id: int | None = None) -> int:
        with self.db.session.begin() as s:
            run = AnsibleRun(playbook=playbook, status="running", actor=self.actor, ident=ident, rollout_id=rollout_id)
            s.add(run)
            s.flush()
            return run.id

    def finish_run(self, run_id: int, status: str, stats: dict[str, Any] | None = None) -> None:
        with self.db.session.begin() as s:
            run = s.get(AnsibleRun, run_id)
            if run is not None and run.status == "running":
                run.status = status
                run.finished_at = utcnow()
                run.stats = stats or {}

    # ------------------------------------------------------------------ results

    def record_task_result(
        self,
        run_id: int | None,
        host_name: str,
        action: str,
        status: str,
        result: dict[str, Any],
        task_args: dict[str, Any] | None = None,
        *,
        check_mode: bool = False,
        no_log: bool = False,
        delegate_to: str | None = None,
    ) -> None:
        """What one task did on one host, however Ansible ran it (a loop's items each recorded, a delegated task
        on its delegate, an async task when its result is collected), from the callback plugin or from the
        controller's event stream: the one entry point both use."""
        for item_status, raw in task_results(status, result):
            item = sanitize(raw)  # bounded, known codes, valid names: nothing else reaches the database
            if item.get("ansible_job_id") and not item.get("finished"):
                continue  # an async task just started: its result comes later, through async_status
            item_action = livepatch_action_of(action, item)
            if item_action is None:
                if item_status != "unreachable":
                    continue  # reachability is news from any task; results only from klpfleet's modules
                item_action = action
            no_log_item = no_log or bool(item.get("_ansible_no_log")) or "censored" in item
            check = check_mode or bool(item.get("_ansible_check_mode"))
            self.record(
                run_id,
                host_name,
                item_action,
                item_status,
                _clean(item),
                _args_of(task_args or {}, item),
                check_mode=check,
                no_log=no_log_item,
                delegated=_delegation(item, delegate_to),
            )

    def record(
        self,
        run_id: int | None,
        host_name: str,
        action: str,
        status: str,
        result: dict[str, Any],
        args: dict[str, Any] | None = None,
        check_mode: bool = False,
        no_log: bool = False,
        delegated: dict[str, str] | None = None,
    ) -> None:
        """status: ok | failed | unreachable. Check-mode results change no state."""
        if check_mode or not HOST_NAME_RE.match(host_name):
            return
        args = args or {}
        with self.db.session.begin() as s:
            host = (self._delegate(s, delegated) if delegated else None) or self._host(s, host_name)
            observed_by = f"ansible-run:{run_id}" if run_id else "ansible"
            if status == "unreachable":
                host.reachable = False
                patch = (
                    self._patch(s, host, args.get("name"), args.get("sha256")) if is_livepatch_action(action) else None
                )
                if patch is not None:
                    observe(
                        s,
                        host,
                        patch,
                        PatchObservation(state=PatchState.UNREACHABLE, attempted=True),
                        observed_by=observed_by,
                        actor=self.actor,
                    )
                else:
                    events.record(
                        s,
                        "host.unreachable",
                        actor=self.actor,
                        host=host,
                        run_id=run_id,
                        msg=None if no_log else str(result.get("msg", ""))[:500],
                    )
                return
            host.reachable = True
            host.last_seen = utcnow()
            release = result.get("kernel_release")
            if release is not None and not valid_kernel_release(release):
                events.record(
                    s, "host.bad_report", actor=self.actor, host=host, field="kernel_release", value=repr(release)[:200]
                )
                release = None
            if isinstance(release, str) and release and release != host.kernel_release:
                if host.kernel_release is not None:
                    events.record(
                        s,
                        "host.kernel_changed",
                        actor=self.actor,
                        host=host,
                        previous=host.kernel_release,
                        current=release,
                    )
                host.kernel_release = release
            if action in INFO_ACTIONS:
                if status == "ok":
                    self._record_info(s, host, result, observed_by)
                return
            self._record_patch(s, host, status, result, args, observed_by, no_log)

    def _record_patch(
        self,
        s: Session,
        host: Host,
        status: str,
        result: dict[str, Any],
        args: dict[str, Any],
        observed_by: str,
        no_log: bool,
    ) -> None:
        if "censored" in result:
            # no_log: Ansible hid the whole result. Only the task's literal target state is known.
            target = "applied" if args.get("state", "present") == "present" else "removed"
            result = {"outcome": target if status == "ok" else "no_log"}
        name = result.get("name") or args.get("name")
        patch = self._patch(s, host, name, args.get("sha256"))
        if patch is None:
            events.record(
                s,
                "patch.unregistered",
                actor=self.actor,
                host=host,
                patch_name=name,
                outcome=result.get("outcome"),
                klp_error=result.get("klp_error"),
            )
            return
        sysfs = result.get("patch") or {}
        seen = PatchObservation(
            state=PatchState.ABSENT,
            enabled=sysfs.get("enabled"),
            transition=sysfs.get("transition"),
            stack_order=sysfs.get("stack_order"),
            replace=sysfs.get("replace"),
            objects=dict(sysfs.get("objects") or {}),
            outcome=result.get("outcome"),
            host_clean=result.get("host_clean"),
            attempted=bool(result.get("attempts")) or status == "failed",
        )
        # The module's own result decides, not Ansible's verdict on the task: `failed_when` and
        # `ignore_errors` change the verdict, never what the kernel did.
        code = result.get("klp_error")
        outcome = result.get("outcome")
        if not code and outcome in ("applied", "already_applied"):
            # A force pins this patch only on some kernels (`pinned` names what this one pinned).
            seen.state = PatchState.FORCED if name in (result.get("pinned") or []) else PatchState.APPLIED
        elif not code and result.get("module_pinned"):
            seen.state = PatchState.PINNED
        elif not code and (outcome in ("removed", "already_absent") or status == "ok"):
            seen.state = PatchState.ABSENT
        else:
            seen.state = FAILURE_OUTCOME_STATES.get(str(outcome), PatchState.FAILED)
            if code == "forced_unremovable":
                seen.state = PatchState.PINNED
            seen.error_code = code
            seen.errno = result.get("errno") if isinstance(result.get("errno"), int) else None
            seen.refused_object = result.get("refused_object")
            if not no_log:
                seen.stalled_tasks = [stalled_task(t) for t in result.get("stalled_tasks") or [] if isinstance(t, dict)]
        if not no_log:
            seen.notes = result_notes(result)
        observe(s, host, patch, seen, observed_by=observed_by, actor=self.actor)
        if seen.state in (PatchState.APPLIED, PatchState.FORCED) and not no_log:
            self._record_replaced(s, host, patch.name, result.get("replaced"), observed_by)

    def _record_replaced(self, s: Session, host: Host, name: str, replaced: Any, observed_by: str) -> None:
        """Patches a cumulative patch freed as its transition completed: absent now, and why."""
        for old in replaced if isinstance(replaced, list) else []:
            patch = self._patch(s, host, str(old), None)
            if patch is None:
                continue
            row = s.scalar(select(HostPatch).where(HostPatch.host_id == host.id, HostPatch.patch_id == patch.id))
            if row is None or row.state == PatchState.ABSENT:
                continue
            seen = PatchObservation(state=PatchState.ABSENT, host_clean=False, notes={"replaced_by": name})
            observe(s, host, patch, seen, observed_by=observed_by, actor=self.actor)

    def _record_info(self, s: Session, host: Host, facts: dict[str, Any], observed_by: str) -> None:
        host.livepatch_supported = facts.get("livepatch_supported")
        rebooted = boots.observe_boot(s, host, facts, self.actor)
        at_boot = boots.loaded_at_boot(facts) if rebooted else {}
        on_host = {p.get("name"): p for p in facts.get("patches") or [] if isinstance(p, dict)}
        forced_lingering = {p.get("name") for p in facts.get("forced_modules") or [] if isinstance(p, dict)}
        known = {hp.patch_id: hp for hp in s.scalars(select(HostPatch).where(HostPatch.host_id == host.id))}
        for name, sysfs in on_host.items():
            patch = self._patch(s, host, name, None)
            if patch is None:
                events.record(s, "patch.unknown_found", actor=self.actor, host=host, patch_name=name)
                continue
            if sysfs.get("forced"):
                state = PatchState.FORCED
            elif sysfs.get("transition"):
                state = PatchState.TRANSITIONING if sysfs.get("enabled") else PatchState.UNLOADING
            else:
                state = PatchState.APPLIED
            observe(
                s,
                host,
                patch,
                PatchObservation(
                    state=state,
                    enabled=sysfs.get("enabled"),
                    transition=sysfs.get("transition"),
                    stack_order=sysfs.get("stack_order"),
                    replace=sysfs.get("replace"),
                    objects=dict(sysfs.get("objects") or {}),
                ),
                observed_by=observed_by,
                actor=self.actor,
            )
            if str(name) in at_boot:
                boots.record_reloaded(s, host, patch, at_boot[str(name)], self.actor)
            known.pop(patch.id, None)
        for row in known.values():
            patch = s.get(Patch, row.patch_id)
            if patch is None:
                continue
            after_boot = boots.missing_state(
                row.state, patch.kernel_release, host.kernel_release, rebooted, at_boot.get(patch.name)
            )
            if after_boot is not None:
                boots.observe_missing(s, host, patch, row, after_boot, at_boot.get(patch.name), observed_by, self.actor)
                continue
            # Not on the host. Failure states keep their story (the refusal is still the last word).
            if patch.name in forced_lingering:
                state = PatchState.PINNED
            elif row.state in (PatchState.REFUSED, PatchState.STALLED, PatchState.FAILED) and row.host_clean:
                continue
            elif row.state in (PatchState.LOST_AT_REBOOT, PatchState.SUPERSEDED):
                continue  # still lost (reconcile puts it back), still for another release
            else:
                state = PatchState.ABSENT
            observe(
                s,
                host,
                patch,
                PatchObservation(state=state, host_clean=row.host_clean),
                observed_by=observed_by,
                actor=self.actor,
            )
        refusals = [r for r in facts.get("refused_module_loads") or [] if isinstance(r, dict)]
        if refusals:
            seen = self.refusals_seen(s, host)
            for refusal in refusals:
                self.module_refusal(s, host, refusal, seen)
        self._check_stack_order(s, host, facts)

    def _check_stack_order(self, s: Session, host: Host, facts: dict[str, Any]) -> None:
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
            events.record(s, "host.stack_order_conflict", actor=self.actor, host=host, **finding)

    @staticmethod
    def refusals_seen(s: Session, host: Host) -> set[tuple[Any, Any, Any]]:
        rows = s.execute(
            select(Event.patch_name, Event.details).where(Event.host_id == host.id, Event.kind == "module.load_refused")
        ).all()
        return {(p, str(d.get("module")), str(d.get("seq"))) for p, d in rows if isinstance(d, dict)}

    def module_refusal(
        self, s: Session, host: Host, refusal: dict[str, Any], seen: set[tuple[Any, Any, Any]] | None = None
    ) -> None:
        """A target-module load a patch refused (found in the kernel log): one event per log record. `seen` (what
        is already recorded) is read once per report, so a report of many refusals is not quadratic."""
        patch_name, module, seq = refusal.get("patch"), refusal.get("module"), refusal.get("seq")
        if seen is None:
            seen = self.refusals_seen(s, host)
        key = (patch_name, str(module), str(seq))
        if key in seen:
            return
        seen.add(key)
        patch = self._patch(s, host, patch_name, None)
        events.record(
            s,
            "module.load_refused",
            actor=self.actor,
            host=host,
            patch=patch,
            patch_name=str(patch_name),
            module=module,
            seq=seq,
            seconds_since_boot=refusal.get("seconds_since_boot"),
        )

    # ------------------------------------------------------------------ lookups

    def _delegate(self, s: Session, delegated: dict[str, str]) -> Host | None:
        """The delegated host: by name when a host has that name, else the one host whose address is what the task
        named (`delegate_to: 10.0.0.5` means the host reached at that address, not a new host called so) or its
        ansible_host; a name nothing matches is a host the recorder did not know."""
        name = delegated.get("name")
        if name:
            known = s.scalar(select(Host).where(Host.name == name))
            if known is not None:
                return known
        for address in (name, delegated.get("address")):
            if address:
                found = list(s.scalars(select(Host).where(or_(Host.name == address, Host.address == address)).limit(2)))
                if len(found) == 1:
                    return found[0]
        return self._host(s, name) if name else None

    def _host(self, s: Session, name: str) -> Host:
        host = s.scalar(select(Host).where(Host.name == name))
        if host is None:
            host = Host(name=name, vars={})
            s.add(host)
            s.flush()
            events.record(s, "host.discovered", actor=self.actor, host=host)
        return host

    def _patch(self, s: Session, host: Host, name: Any, sha256: Any) -> Patch | None:
        if isinstance(sha256, str) and SHA256_RE.match(sha256):
            found = s.scalar(select(Patch).where(Patch.sha256 == sha256.lower()))
            if found is not None:
                return found
        if not isinstance(name, str) or not name:
            return None
        candidates = list(s.scalars(select(Patch).where(Patch.name == name).order_by(Patch.added_at.desc())))
        for p in candidates:
            if host.kernel_release and p.kernel_release == host.kernel_release:
                return p
        return candidates[0] if candidates else None
