"""Turning klpfleet.livepatch module results into host patch state, one transaction per result.

The Ansible callback plugin `klpfleet.livepatch.recorder` is a thin adapter over this; the controller
and the probe use the same mapping, so a result means the same thing whoever recorded it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from klpfleet.db import events
from klpfleet.db.engine import Database
from klpfleet.db.models import AnsibleRun, Host, HostPatch, Patch, utcnow
from klpfleet.hoststate import boots
from klpfleet.hoststate.kernel_log import check_stack_order, record_refusals
from klpfleet.hoststate.lookups import find_patch
from klpfleet.hoststate.module_results import is_module_name, sanitize
from klpfleet.hoststate.observations import PatchObservation, module_signatures, observe
from klpfleet.hoststate.task_results import (
    BOOT_ACTIONS,
    INFO_ACTIONS,
    args_of,
    clean_result,
    delegation_of,
    is_livepatch_action,
    livepatch_action_of,
    result_notes,
    stalled_task,
    task_results,
)
from klpfleet.names import HOST_NAME_RE, SHA256_RE, sysfs_functions, valid_kernel_release
from klpfleet.states import FAILURE_OUTCOME_STATES, PatchState


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
                clean_result(item),
                args_of(task_args or {}, item),
                check_mode=check,
                no_log=no_log_item,
                delegated=delegation_of(item, delegate_to),
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
                    find_patch(s, host, args.get("name"), args.get("sha256")) if is_livepatch_action(action) else None
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
                    events.add(
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
                events.add(
                    s, "host.bad_report", actor=self.actor, host=host, field="kernel_release", value=repr(release)[:200]
                )
                release = None
            if isinstance(release, str) and release and release != host.kernel_release:
                if host.kernel_release is not None:
                    events.add(
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
            if action in BOOT_ACTIONS:
                if status == "ok":
                    self._record_dropped(s, host, result.get("dropped"), run_id)
                else:  # the boot loader may still load a blocked patch there: say so where status reads events
                    msg = None if no_log else str(result.get("msg", ""))[:500]
                    events.add(s, "boot.drop_failed", actor=self.actor, host=host, run_id=run_id, msg=msg)
                return
            self._record_patch(s, host, status, result, args, observed_by, no_log)
            if status == "ok":  # the blocked builds its run took out of the boot manifest (apply.yml)
                self._record_dropped(s, host, result.get("boot_dropped"), run_id)

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
        patch = find_patch(s, host, name, args.get("sha256"))
        if patch is None:
            events.add(
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
            functions=sysfs_functions(sysfs.get("functions")),
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
            patch = find_patch(s, host, str(old), None)
            if patch is None:
                continue
            row = s.scalar(select(HostPatch).where(HostPatch.host_id == host.id, HostPatch.patch_id == patch.id))
            if row is None or row.state == PatchState.ABSENT:
                continue
            seen = PatchObservation(state=PatchState.ABSENT, host_clean=False, notes={"replaced_by": name})
            observe(s, host, patch, seen, observed_by=observed_by, actor=self.actor)

    def _record_dropped(self, s: Session, host: Host, dropped: Any, run_id: int | None) -> None:
        """Builds the host took out of its boot manifest (boot_manifest, for blocked patches): one event each."""
        for entry in dropped if isinstance(dropped, list) else []:
            if not isinstance(entry, dict):
                continue
            sha, name, release = entry.get("sha256"), entry.get("name"), entry.get("kernel_release")
            if not (isinstance(sha, str) and SHA256_RE.match(sha) and is_module_name(name)):
                continue  # not what the module reports: nothing worth keeping
            patch = s.scalar(select(Patch).where(Patch.sha256 == sha))
            events.add(
                s,
                "boot.dropped",
                actor=self.actor,
                host=host,
                patch=patch,
                patch_name=None if patch else name,
                sha256=sha,
                kernel_release=release if valid_kernel_release(release) else None,
                run_id=run_id,
                blocked=bool(patch is not None and patch.blocked_at is not None),
            )

    def _record_info(self, s: Session, host: Host, facts: dict[str, Any], observed_by: str) -> None:
        host.livepatch_supported = facts.get("livepatch_supported")
        host.module_signatures = module_signatures(facts.get("signatures"))
        rebooted = boots.observe_boot(s, host, facts, self.actor)
        at_boot = boots.loaded_at_boot(facts) if rebooted else {}
        on_host = {p.get("name"): p for p in facts.get("patches") or [] if isinstance(p, dict)}
        forced_lingering = {p.get("name") for p in facts.get("forced_modules") or [] if isinstance(p, dict)}
        known = {hp.patch_id: hp for hp in s.scalars(select(HostPatch).where(HostPatch.host_id == host.id))}
        for name, sysfs in on_host.items():
            patch = find_patch(s, host, name, None)
            if patch is None:
                events.add(s, "patch.unknown_found", actor=self.actor, host=host, patch_name=name)
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
                PatchObservation.in_sysfs(state, sysfs),
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
        record_refusals(s, host, facts, self.actor)
        check_stack_order(s, host, facts, self.actor)

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
            events.add(s, "host.discovered", actor=self.actor, host=host)
        return host
