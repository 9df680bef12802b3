"""Background analysis: the policy's `background: true` checks measured the whole rollout long, in a thread of the
driver, over every host the rollout patched so far against the hosts it has not touched. A check that fails or
turns inconclusive stops the rollout at the driver's next safe point (the run in flight completes first, as it
does for an operator's pause): failed -> the policy's --on-failure, inconclusive -> pause. A resumed rollout
starts its background checks afresh."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from klpfleet.analysis.measure import Analysis, CheckRun, Measurement, Result, judge, shown_query, take
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

    def measure_until_done(self, checks: list[Any], backend: Prometheus | None) -> None:
        runs = [CheckRun(c) for c in checks]
        due: dict[int, float] = {}  # scheduled once a host is patched: initial_delay counts from then
        elapsed = 0.0
        while not self.done.is_set():
            step = max(0.05, min(due.values(), default=elapsed + 1.0) - elapsed)
            if self.done.wait(step):
                return
            elapsed += step
            if self.store.status() != RolloutStatus.RUNNING:
                continue  # paused: nothing is judged while no wave moves
            scope = self.scope()
            if not scope.wave_hosts:
                continue
            if not due:
                due = {id(r): elapsed + r.check.initial_delay for r in runs}
            for r in runs:
                if due[id(r)] > elapsed:
                    continue
                due[id(r)] = elapsed + r.check.interval
                m = take(r.check, backend, scope, [])
                if m.result == Result.SKIPPED:
                    continue  # nothing patched yet, or nothing left to compare with: nothing to judge
                r.add(m)
                self.record(m, r, scope.wave)
                if r.result in (Result.FAILED, Result.INCONCLUSIVE):
                    self.verdict = judge([r])
                    return

    def record(self, m: Measurement, run: CheckRun, wave: int) -> None:
        with self.db.session.begin() as s:
            r = s.get(Rollout, self.id)
            details = {"wave": wave, "background": True, "query": shown_query(run.check), **m.details()}
            events.add(s, "analysis.measured", actor=self.actor, rollout=r, **details)
            if run.result is not None:
                details = {**run.details(), "background": True}
                events.add(s, "analysis.check_ended", actor=self.actor, rollout=r, wave=wave, **details)
