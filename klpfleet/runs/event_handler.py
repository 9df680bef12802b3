"""Recording one run from ansible-runner's events: its row in the database, each host's module result written
through the recorder (klpfleet.hoststate), and the per-host results the caller decides on. The same handler serves
a local run and a job streamed back from an execution node."""

from __future__ import annotations

import contextlib
from typing import Any

from klpfleet.collection import playbooks_path
from klpfleet.db.engine import Database
from klpfleet.hoststate.module_results import sanitize
from klpfleet.runs.types import HostResult


class RunEventHandler:
    """One run's row in the database and its per-host results, fed from ansible-runner's events: the same
    for a local run and a job streamed back from an execution node."""

    def __init__(
        self,
        db: Database,
        playbook: str,
        ident: str,
        rollout_id: int | None,
        allowed: set[str] | None = None,
        delegation: bool = True,
    ) -> None:
        from klpfleet.db.events import default_actor
        from klpfleet.hoststate.recorder import Recorder

        self.recorder = Recorder(db, actor=f"ansible:{default_actor()}")
        self.run_id = self.recorder.start_run(str(playbooks_path() / playbook), ident=ident, rollout_id=rollout_id)
        self.results: dict[str, HostResult] = {}
        self.stats: dict[str, Any] = {}
        self.allowed = allowed  # the hosts this run was given; a result for any other is never recorded
        self.delegation = delegation  # whether a result may name a delegate (only when Ansible ran here)

    def on_event(self, event: dict[str, Any]) -> bool:
        from klpfleet.hoststate.task_results import BOOT_ACTIONS, livepatch_action_of

        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind == "playbook_on_stats":
            self.stats.update({k: data.get(k) or {} for k in ("ok", "changed", "failures", "dark", "skipped")})
        host = data.get("host")
        if not host or kind not in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            return True
        action = data.get("resolved_action") or data.get("task_action")
        if self.allowed is not None and host not in self.allowed:
            return True  # a result for a host this run was not given (a node's are judged whole in nodes.dispatch)
        # Bounded, known codes, valid names (hoststate.module_results). A run whose stream comes from elsewhere (an
        # execution node) does not get to say a result belongs to a delegate: that would name another host.
        res = sanitize(data.get("res") or {})
        if not self.delegation:
            res.pop("_ansible_delegated_vars", None)
        status = {"runner_on_ok": "ok", "runner_on_failed": "failed"}.get(kind, "unreachable")
        self.recorder.record_task_result(self.run_id, host, str(action), status, res, data.get("task_args") or {})
        found = livepatch_action_of(str(action), res)
        if kind == "runner_on_unreachable":
            self.results[host] = HostResult(host, "unreachable", res)
        elif found in BOOT_ACTIONS:
            pass  # recorded above (boot.dropped, boot.drop_failed); the host's answer is its patch or patch_info result
        elif found:
            self.results[host] = HostResult(host, status, res)
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            self.results[host] = HostResult(host, "failed", {"msg": res.get("msg"), "task": data.get("task")})
        return True

    def finish(self, runner_status: str, extra: dict[str, Any] | None = None) -> None:
        stats = self.stats
        bad = any((stats.get("failures") or {}).values()) or any((stats.get("dark") or {}).values())
        ended = {"successful": "failed" if bad else "completed", "failed": "failed"}.get(runner_status, "interrupted")
        self.recorder.finish_run(self.run_id, ended, {"hosts": stats, **(extra or {})})

    def interrupted(self) -> None:
        with contextlib.suppress(Exception):  # the run's row must not stay "running"; the cause goes on up
            self.recorder.finish_run(self.run_id, "interrupted")
