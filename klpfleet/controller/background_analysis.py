"""Background analysis: the policy's `background: true` checks measured the whole rollout long, in a thread of the
driver, over every host the rollout patched so far against the hosts it has not touched. A check that fails or
turns inconclusive stops the rollout at the driver's next safe point (the run in flight completes first, as it
does for an operator's pause): failed -> the policy's --on-failure, inconclusive -> pause. A resumed rollout
starts its background checks afresh."""

from __future__ import annotations

import threading
from types import TracebackType

from klpfleet.analysis.checks import Check
from klpfleet.analysis.measure import Analysis, CheckRun, Measurement, Result, run_checks, shown_query, take
from klpfleet.analysis.placeholders import Scope
from klpfleet.analysis.prometheus import QUERY_TIMEOUT, Prometheus
from klpfleet.controller.store import RolloutStore
from klpfleet.db import events
from klpfleet.db.engine import Database
from klpfleet.db.models import Rollout
from klpfleet.runs.variables import RunVarsError
from klpfleet.states import RolloutStatus


class BackgroundAnalysis:
    """A context manager around a drive: starts the thread when the policy has background checks."""

    def __init__(self, db: Database, rollout_id: int, actor: str) -> None:
        self.db, self.id, self.actor = db, rollout_id, actor
        self.store = RolloutStore(db, rollout_id)
        self.verdict: Analysis | None = None  # set once a check failed or turned inconclusive
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        self.wave = 1  # the wave the latest measurement was about

    def __enter__(self) -> BackgroundAnalysis:
        policy = self.store.policy()
        try:
            checks = [c for c in policy.checks() if c.background]
        except RunVarsError:
            return self  # a stored policy that does not parse: the first wave's gate pauses the rollout with it
        if checks:
            backend = Prometheus(policy.prometheus) if policy.prometheus else None
            self.thread = threading.Thread(
                target=self.measure_until_done, args=(checks, backend), name=f"analysis-{self.id}", daemon=True
            )
            self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(QUERY_TIMEOUT * 2 + 5)

    def scope(self) -> Scope:
        with self.db.session() as s:
            r = s.get(Rollout, self.id)
            current = (r.current_wave or 0) if r is not None else 0
            patched = tuple(sorted(self.store.applied_hosts(s)))
        return Scope(self.id, current + 1, patched, tuple(self.store.control_hosts(current)))

    def patched_any(self) -> bool:
        with self.db.session() as s:
            return bool(self.store.applied_hosts(s))

    def measure_until_done(self, checks: list[Check], backend: Prometheus | None) -> None:
        """The checks on their schedules (initial_delay counting from the first patched host) until the drive ends
        or one fails or turns inconclusive."""
        while not self.patched_any():
            if self.done.wait(1.0):
                return
        outcome = run_checks(
            checks,
            lambda check: self.measure(check, backend),
            self.done.wait,
            self.record,
            stop_on=frozenset({Result.FAILED, Result.INCONCLUSIVE}),
        )
        if isinstance(outcome, Analysis) and outcome.result != Result.PASSED:
            self.verdict = outcome

    def measure(self, check: Check, backend: Prometheus | None) -> Measurement:
        if self.store.status() != RolloutStatus.RUNNING:
            return Measurement(check.name, Result.SKIPPED, reason="the rollout is not running")
        scope = self.scope()
        self.wave = scope.wave
        return take(check, backend, scope, [])

    def record(self, m: Measurement, run: CheckRun) -> None:
        if m.result == Result.SKIPPED:
            return  # nothing was judged: an event every interval would only say so
        wave = self.wave
        with self.db.session.begin() as s:
            r = s.get(Rollout, self.id)
            details = {"wave": wave, "background": True, "query": shown_query(run.check), **m.details()}
            events.add(s, "analysis.measured", actor=self.actor, rollout=r, **details)
            if run.result is not None:
                details = {**run.details(), "background": True}
                events.add(s, "analysis.check_ended", actor=self.actor, rollout=r, wave=wave, **details)
