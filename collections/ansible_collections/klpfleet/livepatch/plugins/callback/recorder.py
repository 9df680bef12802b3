# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: recorder
type: notification
short_description: Record every klpfleet.livepatch result into the klpfleet database
version_added: 0.1.0
description:
  - Every M(klpfleet.livepatch.patch) and M(klpfleet.livepatch.patch_info) result of any run, by the klpfleet
    controller or by hand, updates the database's host patch state and appends an event (who, what, outcome,
    klp_error, errno). The run itself is kept with its status - running, completed, failed or interrupted.
  - Each result is written in its own transaction, so an interrupted run leaves nothing half-written.
  - Never migrates the schema. A database that is missing or behind is reported loudly and nothing is recorded.
  - Values of tasks with C(no_log) are never stored; check-mode results change no state.
requirements:
  - klpfleet installed in the controller's Python (it brings SQLAlchemy)
options:
  db:
    description: Database URL or SQLite path; defaults to klpfleet's default database.
    type: str
    env:
      - name: KLPFLEET_DB
    ini:
      - section: callback_klpfleet_recorder
        key: db
  run_ident:
    description: Identifier of the run (the klpfleet controller passes ansible-runner's ident).
    type: str
    env:
      - name: KLPFLEET_RUN_IDENT
  rollout_id:
    description: The klpfleet rollout this run belongs to.
    type: int
    env:
      - name: KLPFLEET_ROLLOUT_ID
  controller_records:
    description:
      - Set by the klpfleet controller for the runs it starts. It records their results from ansible-runner's
        event stream itself, with the same code, so this plugin stays silent and the run needs no database
        credentials.
    type: bool
    default: false
    env:
      - name: KLPFLEET_CONTROLLER_RECORDS
"""

import contextlib
import os
import signal

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "klpfleet.livepatch.recorder"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorder = None
        self.run_id = None
        self.disabled_reason = None
        self.playbook = "adhoc"
        self.failed_hosts = set()
        self._previous_handlers = {}

    # ------------------------------------------------------------------ setup

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        if self.get_option("controller_records"):
            return
        try:
            from klpfleet.db.engine import connect
            from klpfleet.errors import KlpfleetError
            from klpfleet.hoststate.recorder import Recorder
        except ImportError as exc:
            self._disable("klpfleet is not installed in this Python (%s)" % exc)
            return
        try:
            self.recorder = Recorder(connect(self.get_option("db")))
        except KlpfleetError as exc:
            self._disable(str(exc))

    def _disable(self, reason):
        self.disabled_reason = reason
        self._display.error("klpfleet recorder: NOT RECORDING this run: %s" % reason)

    def _ensure_run(self):
        if self.recorder is None or self.run_id is not None:
            return
        ident = self.get_option("run_ident")
        rollout = self.get_option("rollout_id")
        self.run_id = self.recorder.start_run(self.playbook, ident=ident, rollout_id=rollout)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # ValueError: not the main thread
                self._previous_handlers[sig] = signal.signal(sig, self._interrupted)

    def _interrupted(self, signum, frame):
        if self.recorder is not None and self.run_id is not None:
            try:
                self.recorder.finish_run(self.run_id, "interrupted")
            except Exception as exc:  # never hide the interruption itself
                self._display.warning("klpfleet recorder: could not mark the run interrupted: %s" % exc)
        previous = self._previous_handlers.get(signum)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    # ------------------------------------------------------------------ events

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.abspath(playbook._file_name)
        self._ensure_run()

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._record(result, "failed")

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        if self.recorder is None:
            if self.disabled_reason:
                self._display.error(
                    "klpfleet recorder: the results of this run were NOT recorded: %s" % self.disabled_reason
                )
            return
        self._ensure_run()
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        bad = any(s.get("failures") or s.get("unreachable") for s in summary.values())
        self.recorder.finish_run(self.run_id, "failed" if bad else "completed", {"hosts": summary})

    def _record(self, result, status):
        if self.recorder is None:
            return
        task = result._task
        action = getattr(task, "resolved_action", None) or task.action
        self._ensure_run()
        raw = result._result
        try:
            self.recorder.record_task_result(
                self.run_id,
                result._host.get_name(),
                action,
                status,
                dict(raw),  # internal keys are dropped by the recorder, after it read no_log and check mode
                dict(task.args or {}),
                check_mode=task.check_mode is True,
                no_log=bool(task.no_log),
                delegate_to=task.delegate_to if isinstance(task.delegate_to, str) else None,
            )
        except Exception as exc:  # a database problem must not kill the playbook
            self._display.error(
                "klpfleet recorder: could not record %s on %s: %s" % (action, result._host.get_name(), exc)
            )
