"""Driving a rollout wave by wave, crash-safe.

Every step is committed before the host work it announces: a host is marked `running` before the
playbook that touches it starts, and `done` with its outcome after. A controller killed at any point
therefore leaves hosts either `pending` (never touched), `done` (never run again) or `running` (re-read
with patch_info before any decision). Gate counts are computed from the hosts' final outcomes, so
nothing is counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy.orm import Session

from klpfleet.analysis.measure import Analysis, Result
from klpfleet.controller.background_analysis import BackgroundAnalysis
from klpfleet.controller.gate import Verdict, WaveCounts
from klpfleet.controller.health import check_wave_health
from klpfleet.controller.interrupt import Halt, OperatorStop, StopRequest
from klpfleet.controller.lease import Lease, LeaseLost
from klpfleet.controller.outcomes import node_failure_report, outcome_of, transition_of
from klpfleet.controller.playbook import engine_for, run_playbook
from klpfleet.controller.policy import Policy
from klpfleet.controller.progress import Progress, Silent
from klpfleet.controller.recovery import recover_in_flight
from klpfleet.controller.rollback import REMOVED, batch_order, rollback_batches
from klpfleet.controller.store import RolloutStore
from klpfleet.controller.wave_analysis import analysed
from klpfleet.db import events
from klpfleet.db.engine import Database
from klpfleet.db.models import Host, Rollout, Wave, utcnow
from klpfleet.inventory.export import fleet_inventory
from klpfleet.runs.engine import Engine
from klpfleet.runs.types import RunOutcome, RunRequest, runs_dir
from klpfleet.runs.variables import RunVarsError
from klpfleet.states import (
    TERMINAL_ROLLOUT_STATUSES,
    RolloutStatus,
    WaveHostStatus,
    WaveStatus,
)
from klpfleet.wording import counted


class Driver:
    def __init__(
        self,
        db: Database,
        rollout_id: int,
        *,
        actor: str | None = None,
        progress: Progress | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.db = db
        self.id = rollout_id
        self.actor = actor or events.default_actor()
        self.progress: Progress = progress or Silent()
        self.sleep = sleep
        self.lease = Lease(db, rollout_id)
        self.store = RolloutStore(db, rollout_id)
        self.runs_in = runs_dir(db) / f"rollout-{rollout_id}"
        self.engine = Engine("ansible", "auto")  # chosen when the drive starts (mark_started)
        self.stop = StopRequest()  # Ctrl-C or SIGTERM: pause at the next step
        self.background: BackgroundAnalysis | None = None  # the policy's background checks, while driving

    def request(self, playbook: str, hosts: list[str], extravars: dict[str, Any], step: str, forks: int) -> RunRequest:
        """A run of this rollout: its folder, its lease's cancel, its engine."""
        records, ident = fleet_inventory(self.db, hosts), f"r{self.id}-{step}"
        return RunRequest(
            self.db, playbook, records, extravars, self.runs_in, ident, forks, self.id, self.cancel, self.engine
        )

    def tx(self) -> AbstractContextManager[Session]:
        return self.db.session.begin()

    def event(self, s: Session, kind: str, rollout: Rollout, host: Host | None = None, **details: Any) -> None:
        events.add(s, kind, actor=self.actor, rollout=rollout, patch=rollout.patch, host=host, **details)

    def pause(self, s: Session, r: Rollout, reason: str, by: str, **details: Any) -> None:
        r.status, r.pause_reason = RolloutStatus.PAUSED, reason
        self.event(s, "rollout.paused", r, reason=reason, by=by, **details)

    def interrupted(self) -> Halt | None:
        """A pause or abort asked for by an operator, or a lost lease: checked at every safe point."""
        self.stop.check()
        if self.lease.lost.is_set():
            raise LeaseLost(f"lost the lease on rollout {self.id}")
        if self.background is not None and self.background.verdict is not None:
            return Halt.ANALYSIS
        status = self.store.status()
        return {RolloutStatus.PAUSED: Halt.PAUSE, RolloutStatus.ABORTING: Halt.ABORT}.get(status)

    def wait(self, seconds: float) -> Halt | None:
        """Sleep in small steps, returning early on a pause, abort or promotion past the wait."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            why = self.interrupted()
            if why:
                return why
            if self.store.control().promoted_full:
                return None
            self.sleep(min(1.0, max(0.0, end - time.monotonic())))
        return self.interrupted()

    def cancel(self) -> bool:
        return self.lease.lost.is_set() or self.stop.is_set()

    # ------------------------------------------------------------------ the loop

    def drive(self) -> RolloutStatus:
        """The rollout, wave after wave, until it completes or stops: the status it ends in. Each step commits
        before the next."""
        with self.lease, self.stop.on_signals(), BackgroundAnalysis(self.db, self.id, self.actor) as self.background:
            try:
                return self.steps()
            except OperatorStop:
                return self.paused_by_signal()

    def steps(self) -> RolloutStatus:
        """Wave after wave until the rollout completes or stops."""
        self.mark_started()
        while True:
            status = self.store.status()
            if status == RolloutStatus.ABORTING:
                return self.abort()
            if status == RolloutStatus.PAUSED or status in TERMINAL_ROLLOUT_STATUSES:
                return status
            if (blocked := self.store.blocked()) is not None:
                return self.paused_by_block(blocked)
            wave = self.store.next_wave()
            if wave is None:
                return self.mark_completed()
            wave_id, total = wave
            try:
                ended = self.run_wave(wave_id, total)
            except RunVarsError as exc:
                return self.refuse_to_run(str(exc))
            if ended is not None:
                return ended

    def paused_by_signal(self) -> RolloutStatus:
        """The rollout pauses (an abort stays an abort); how to go on is said."""
        with self.tx() as s:
            r = self.lease.check(s)
            if r.status == RolloutStatus.RUNNING:
                reason = f"stopped by {self.stop.signal_name}; hosts in flight are read again when it resumes"
                self.pause(s, r, reason, "signal")
            status = RolloutStatus(r.status)
        self.progress.note(f"rollout {self.id} {status}: resume it with `klpfleet rollout resume {self.id} --wait`")
        return status

    def paused_by_block(self, sentence: str) -> RolloutStatus:
        """The patch was blocked (`klpfleet patch block`) while nothing asked this driver to pause: it loads the
        patch nowhere else."""
        with self.tx() as s:
            r = self.lease.check(s)
            self.pause(s, r, sentence, "patch_block")
        self.progress.note(sentence)
        return RolloutStatus.PAUSED

    def refuse_to_run(self, reason: str) -> RolloutStatus:
        """A value from the database is not what a run may be given (runs.variables): nothing ran, and the
        rollout pauses with the reason; whoever fixes the row (or adds the .ko again) resumes it."""
        reason = f"refused to start a run: {reason}"
        with self.tx() as s:
            r = self.lease.check(s)
            self.pause(s, r, reason, "run_vars")
        self.progress.note(reason)
        return RolloutStatus.PAUSED

    def mark_started(self) -> None:
        self.engine = engine_for(self.db, self.store.policy().engine)
        engine: dict[str, Any] = {"engine": self.engine.name, "requested": self.engine.requested}
        if self.engine.reason:
            engine["engine_reason"] = self.engine.reason
        with self.tx() as s:
            r = self.lease.check(s)
            if r.status == RolloutStatus.PLANNED:
                r.status, r.started_at = RolloutStatus.RUNNING, utcnow()
                self.event(s, "rollout.started", r, None, **engine)
            elif r.status == RolloutStatus.RUNNING:
                self.event(s, "rollout.resumed", r, None, reason="driver (re)started", **engine)
        if self.engine.reason:
            self.progress.note(f"engine: {self.engine.name} ({self.engine.reason})")

    def ran(self, run: RunOutcome) -> RunOutcome:
        """Note a run that gave Mitogen up: the rest of the rollout uses Ansible's own strategy."""
        if run.fallback is not None and self.engine.name == "mitogen":
            self.engine = self.engine.fallback(run.fallback)
            self.progress.note(f"engine: ansible ({run.fallback})")
            with self.tx() as s:
                details: dict[str, Any] = {"requested": self.engine.requested, "reason": run.fallback}
                self.event(s, "rollout.engine", self.lease.check(s), engine="ansible", **details)
        return run

    def mark_completed(self) -> RolloutStatus:
        with self.tx() as s:
            r = self.lease.check(s)
            r.status, r.finished_at = RolloutStatus.COMPLETED, utcnow()
            self.event(s, "rollout.completed", r)
        self.progress.note("rollout completed")
        return RolloutStatus.COMPLETED

    # ------------------------------------------------------------------ one wave

    def run_wave(self, wave_id: int, wave_total: int) -> RolloutStatus | None:
        """One wave to its gate: None when it passed (on to the next wave), else the status the drive ends in."""
        policy = self.store.policy()
        with self.tx() as s:
            r = self.lease.check(s)
            wave = s.get(Wave, wave_id)
            assert wave is not None
            index = wave.index
            if wave.status == WaveStatus.PENDING:
                wave.status, wave.started_at = WaveStatus.RUNNING, utcnow()
                r.current_wave = index
                self.event(s, "wave.started", r, wave=index + 1, domain=wave.domain, hosts=len(wave.hosts))
            domain, size = wave.domain, len(wave.hosts)
        self.progress.wave(index, wave_total, domain, size)

        recover_in_flight(self, wave_id, policy)
        why = self.apply_pending(wave_id, policy)
        if why:
            return self.stopped(why)
        why = self.retry_refusals(wave_id, policy)
        if why:
            return self.stopped(why)
        if policy.health_check:
            check_wave_health(self, wave_id, policy)

        counts = self.store.counts(wave_id)
        self.progress.counts(index, counts)
        return self.gate(wave_id, index, counts, policy)

    def apply_pending(self, wave_id: int, policy: Policy) -> Halt | None:
        hosts = self.store.hosts_with(wave_id, WaveHostStatus.PENDING)
        if not hosts:
            return None
        why = self.interrupted()
        if why:
            return why
        with self.tx() as s:
            r = self.lease.check(s)
            patch = r.patch
            for name in hosts:
                wh = self.store.wave_host(s, wave_id, name)
                wh.status, wh.started_at, wh.attempts = WaveHostStatus.RUNNING, utcnow(), wh.attempts + 1
            attempt = max(self.store.wave_host(s, wave_id, n).attempts for n in hosts)
            self.event(s, "wave.run", r, wave=self.store.wave_index(s, wave_id) + 1, hosts=len(hosts), attempt=attempt)
            extravars = policy.apply_vars(patch.name, patch.sha256)
        run = self.ran(
            run_playbook(self.request("apply.yml", hosts, extravars, f"w{wave_id}-t{attempt}", policy.forks))
        )
        if run.status == "canceled":
            self.stop.check()
            raise LeaseLost(f"lost the lease on rollout {self.id} during a run; hosts stay marked in flight")
        with self.tx() as s:
            r = self.lease.check(s)
            for name in hosts:
                outcome, code = outcome_of(run.results[name])
                wh = self.store.wave_host(s, wave_id, name)
                wh.outcome, wh.error_code = outcome, code
                wh.transition_seconds = transition_of(run.results[name])
                if run.results[name].status != "lost":
                    wh.status, wh.finished_at = WaveHostStatus.DONE, utcnow()
            return self.node_failures(s, r, run)

    def node_failures(self, s: Session, r: Rollout, run: RunOutcome) -> Halt | None:
        """Record each execution node that failed; one that left hosts in flight pauses the rollout."""
        failed, reason = node_failure_report(run, self.id)
        for details in failed:
            self.event(s, f"node.{details['failure']}", r, **details)
        if reason is None:
            return None
        self.pause(s, r, reason, "node")
        self.progress.note(reason)
        return Halt.NODE_FAILED

    def retry_refusals(self, wave_id: int, policy: Policy) -> Halt | None:
        """Refusals are safe (the kernel cleaned up): retry them later, as many times as the policy says."""
        while True:
            ids = self.store.refused_to_retry(wave_id, policy.retry_refused)
            if not ids:
                return None
            self.progress.note(f"{len(ids)} refusal(s); retrying in {policy.retry_delay_seconds:g}s")
            why = self.wait(policy.retry_delay_seconds)
            if why:
                return why
            with self.tx() as s:
                r = self.lease.check(s)
                self.store.make_pending(s, ids)
                self.event(s, "wave.retry_refused", r, wave=self.store.wave_index(s, wave_id) + 1, hosts=len(ids))
            why = self.apply_pending(wave_id, policy)
            if why:
                return why

    def gate(self, wave_id: int, index: int, counts: WaveCounts, policy: Policy) -> RolloutStatus | None:
        started = time.monotonic()
        decision = analysed(self, wave_id, index, policy, counts)  # decide_gate's verdict, the checks judged
        if isinstance(decision, Halt):
            return self.stopped(decision)
        with self.tx() as s:
            r = self.lease.check(s)
            wave = s.get(Wave, wave_id)
            assert wave is not None
            self.event(s, "gate.evaluated", r, wave=index + 1, counts=counts.as_dict(), **decision.details())
            if decision.verdict == Verdict.PAUSE:
                wave.status = WaveStatus.BLOCKED
                self.pause(s, r, decision.reason or "gate", "gate", wave=index + 1)
            elif decision.verdict == Verdict.CONTINUE:
                wave.status, wave.finished_at = WaveStatus.COMPLETED, utcnow()
                self.event(s, "wave.completed", r, wave=index + 1, counts=counts.as_dict())
        self.progress.note(decision.reason or f"wave {index + 1} passed its gate")
        if decision.verdict == Verdict.ROLLBACK:
            return self.roll_back(decision.reason or "gate breached")
        if decision.verdict == Verdict.PAUSE:
            return RolloutStatus.PAUSED
        if self.store.is_last_wave(index):
            return None
        baked = time.monotonic() - started if decision.analysis else 0.0  # the analysis took part of the bake
        if policy.bake_seconds > baked and not self.store.control().promoted_full:
            return self.bake(index, policy.bake_seconds - baked)
        return None

    def bake(self, index: int, seconds: float) -> RolloutStatus | None:
        """The wait after a wave, as events: when it started, and how it ended (elapsed, promoted, paused)."""
        self.progress.note(f"baking for {seconds:g}s after wave {index + 1}")
        with self.tx() as s:
            self.event(s, "wave.bake_started", self.lease.check(s), wave=index + 1, seconds=seconds)
        started = time.monotonic()
        why = self.wait(seconds)
        ended = why.value if why else ("promoted" if self.store.control().promoted_full else "elapsed")
        with self.tx() as s:
            waited = round(time.monotonic() - started, 1)
            self.event(s, "wave.bake_ended", self.lease.check(s), wave=index + 1, ended=ended, waited=waited)
        return self.stopped(why) if why else None

    def stopped(self, why: Halt) -> RolloutStatus:
        if why == Halt.ABORT:
            return self.abort()
        if why == Halt.ANALYSIS and self.background is not None and self.background.verdict is not None:
            return self.stopped_by_analysis(self.background.verdict)
        if why == Halt.PAUSE:
            self.progress.note("paused by an operator")
        return RolloutStatus.PAUSED

    def stopped_by_analysis(self, verdict: Analysis) -> RolloutStatus:
        """A background check failed (the policy's --on-failure) or turned inconclusive (pause)."""
        reason = f"background analysis {verdict.result}: {verdict.reason}"
        if verdict.result == Result.FAILED and self.store.policy().on_failure == "rollback":
            return self.roll_back(reason)
        with self.tx() as s:
            self.pause(s, self.lease.check(s), reason, "analysis")
        self.progress.note(reason)
        return RolloutStatus.PAUSED

    def abort(self) -> RolloutStatus:
        return self.roll_back("aborted by an operator", final=RolloutStatus.ABORTED)

    def roll_back(self, reason: str, final: RolloutStatus = RolloutStatus.ROLLED_BACK) -> RolloutStatus:
        """Remove the patch from every host this rollout applied, last wave first."""
        with self.db.session() as s:
            r = s.get(Rollout, self.id)
            assert r is not None
            patch_name = r.patch.name
            applied = self.store.applied_hosts(s)
            batches = batch_order(s, r.patch_id, applied, rollout_id=self.id)
        self.progress.note(f"rolling back {counted(len(applied), 'host')}: {reason}")
        with self.tx() as s:
            r = self.lease.check(s)
            self.event(s, "rollout.rolling_back", r, reason=reason, hosts=len(applied))
        policy = self.store.policy()
        base = self.request("", [], {}, "rb", policy.forks)
        answers = rollback_batches(base, patch_name, batches, transition_timeout=policy.transition_timeout)
        self.stop.check()  # stopped midway: the rollback is decided again, host by host, when it resumes
        with self.tx() as s:
            r = self.lease.check(s)
            self.store.mark_rolled_back(s, [a.host for a in answers if a.result == REMOVED])
            not_removed = {a.host: f"{a.result}: {a.detail}" for a in answers if a.result != REMOVED}
            r.status, r.finished_at, r.pause_reason = final, utcnow(), reason
            removed = len(answers) - len(not_removed)
            self.event(s, f"rollout.{final}", r, reason=reason, removed=removed, not_removed=not_removed)
        return final
