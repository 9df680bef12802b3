"""Measuring checks and judging them, as Argo Rollouts' analysis does: each measurement passes, fails, is
inconclusive (no series, NaN, a regex too large) or errs (the backend); a check fails once its failures pass its
failure limit, is inconclusive once its inconclusive measurements or its backend errors in a row pass theirs, and
passes only when every measurement was taken and at least one passed. Nothing unknown ever passes.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from klpfleet.analysis.checks import Check
from klpfleet.analysis.placeholders import Scope, TooLarge, fill, uses
from klpfleet.analysis.prometheus import BackendError, Sample


class Backend(Protocol):
    def query(self, promql: str) -> list[Sample]: ...


class Result(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"  # the backend did not answer (a measurement only)
    SKIPPED = "skipped"  # nothing to measure for this wave (no control hosts left, no host patched)


@dataclass(frozen=True)
class Measurement:
    check: str
    result: Result
    value: float | None = None
    control: float | None = None
    reason: str | None = None

    def details(self) -> dict[str, Any]:
        def number(v: float | None) -> float | str | None:
            return v if v is None or math.isfinite(v) else str(v)  # JSON has no NaN or infinity

        return {
            "check": self.check,
            "result": self.result.value,
            "value": number(self.value),
            "control": number(self.control),
            "reason": self.reason,
        }


def shown_query(check: Check) -> str:
    """What a measurement's event says was measured: the query as written (placeholders unfilled: a wave's host
    names would make every event as large as the wave), or the transition statistic."""
    if check.transition is not None:
        return f"transition {check.transition}"
    shown = check.query or ""
    if check.control:
        shown += f"  vs  {check.control} ({check.compare})"
    return shown[:2000]


MAX_TRANSITION = 7 * 24 * 3600.0  # seconds: no transition klpfleet waits for is longer


def transition_seconds(value: Any) -> float | None:
    """A transition time as klpfleet believes it (from a host's result or a database row): a finite, plausible
    number of seconds, or nothing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TRANSITION:
        return None  # NaN fails both comparisons
    return float(value)


def percentile(values: Sequence[float], stat: str) -> float:
    ordered = sorted(values)
    if stat == "max":
        return ordered[-1]
    if len(ordered) == 1:
        return ordered[0]
    q = 50 if stat == "p50" else 95
    return statistics.quantiles(ordered, n=100, method="inclusive")[q - 1]


def transition_stats(seconds: Sequence[float]) -> dict[str, float | int]:
    """A wave's transition times as operators read them: how many, the median, the 95th percentile, the worst."""
    return {"hosts": len(seconds), **{stat: round(percentile(seconds, stat), 3) for stat in ("p50", "p95", "max")}}


def take(check: Check, backend: Backend | None, scope: Scope, transitions: Sequence[float]) -> Measurement:
    """One measurement of one check for one wave."""
    condition = check.parsed_condition

    def judged(value: float, control: float | None = None, wave: float | None = None) -> Measurement:
        if math.isnan(value):
            return Measurement(check.name, Result.INCONCLUSIVE, value, control, "the value is NaN")
        verdict = Result.PASSED if condition.holds(value) else Result.FAILED
        compared = f" (wave {wave:g}, control {control:g})" if control is not None and wave is not None else ""
        reason = (
            None
            if verdict == Result.PASSED
            else f"{check.compare if compared else 'value'} {value:g}{compared} is not {condition.text}"
        )
        return Measurement(check.name, verdict, value, control, reason)

    if check.transition is not None:
        if not transitions:
            return Measurement(check.name, Result.INCONCLUSIVE, reason="no transition time recorded for this wave")
        return judged(percentile(transitions, check.transition))
    assert check.query is not None
    queries = [check.query] + ([check.control] if check.control else [])
    if (check.control is not None or uses(check.query, "control_hosts")) and not scope.control_hosts:
        return Measurement(check.name, Result.SKIPPED, reason="no host is left outside the rollout's waves so far")
    if any(uses(q, "wave_hosts") for q in queries) and not scope.wave_hosts:
        return Measurement(check.name, Result.SKIPPED, reason="no host of this wave was patched")
    try:
        filled = [fill(q, scope) for q in queries]
    except TooLarge as exc:
        return Measurement(check.name, Result.INCONCLUSIVE, reason=str(exc))
    if backend is None:
        return Measurement(check.name, Result.ERROR, reason="no Prometheus URL in the policy")
    try:
        answers = [backend.query(q) for q in filled]
    except BackendError as exc:
        return Measurement(check.name, Result.ERROR, reason=str(exc))
    if any(not samples for samples in answers):
        return Measurement(check.name, Result.INCONCLUSIVE, reason="the query returned no series")
    if check.control is None:
        failing = [s.value for s in answers[0] if math.isnan(s.value) or not condition.holds(s.value)]
        return judged(failing[0] if failing else answers[0][0].value)
    if any(len(samples) != 1 for samples in answers):
        sizes = "/".join(str(len(samples)) for samples in answers)
        return Measurement(check.name, Result.INCONCLUSIVE, reason=f"a comparison needs one series each, got {sizes}")
    wave, control = answers[0][0].value, answers[1][0].value
    if math.isnan(wave) or math.isnan(control):
        return Measurement(check.name, Result.INCONCLUSIVE, wave, control, "a value is NaN")
    if check.compare == "difference":
        return judged(wave - control, control, wave)
    if control == 0:
        return judged(1.0 if wave == 0 else math.inf, control, wave)
    return judged(wave / control, control, wave)


@dataclass
class CheckRun:
    check: Check
    taken: int = 0
    tally: dict[str, int] = field(default_factory=dict)
    errors_in_a_row: int = 0
    result: Result | None = None  # set when the check ended
    reason: str | None = None

    def add(self, m: Measurement) -> None:
        if m.result == Result.SKIPPED and self.check.background:
            return  # nothing to judge yet (nothing patched, nothing to compare with, paused): not a measurement
        self.taken += 1
        self.tally[m.result.value] = self.tally.get(m.result.value, 0) + 1
        self.errors_in_a_row = self.errors_in_a_row + 1 if m.result == Result.ERROR else 0
        c = self.check
        if m.result == Result.SKIPPED:
            self.result, self.reason = Result.SKIPPED, m.reason
        elif self.tally.get("failed", 0) > c.failure_limit:
            self.result, self.reason = Result.FAILED, f"{c.name}: {m.reason}"
        elif self.tally.get("inconclusive", 0) > c.inconclusive_limit:
            self.result, self.reason = Result.INCONCLUSIVE, f"{c.name}: inconclusive: {m.reason}"
        elif self.errors_in_a_row > c.consecutive_error_limit:
            self.result, self.reason = Result.INCONCLUSIVE, f"{c.name}: metrics backend: {m.reason}"
        elif self.taken >= c.count and not c.background:  # a background check runs until the rollout ends
            if self.tally.get("passed", 0):
                self.result = Result.PASSED
            else:
                self.result, self.reason = Result.INCONCLUSIVE, f"{c.name}: no measurement passed ({m.reason})"

    def details(self) -> dict[str, Any]:
        return {"check": self.check.name, "result": str(self.result), "reason": self.reason, "tally": self.tally}


@dataclass(frozen=True)
class Analysis:
    result: Result  # passed | failed | inconclusive
    reason: str | None
    checks: list[CheckRun]


def judge(runs: list[CheckRun]) -> Analysis:
    for verdict in (Result.FAILED, Result.INCONCLUSIVE):
        ended = [r for r in runs if r.result == verdict]
        if ended:
            return Analysis(verdict, "; ".join(r.reason or r.check.name for r in ended), runs)
    return Analysis(Result.PASSED, None, runs)


def run_checks(
    checks: list[Check],
    measure: Callable[[Check], Measurement],
    wait: Callable[[float], Any],
    on_measurement: Callable[[Measurement, CheckRun], None],
    clock: Callable[[], float] = time.monotonic,
    stop_on: frozenset[Result] = frozenset({Result.FAILED}),
) -> Analysis | Any:
    """Every check measured on its own schedule until each has ended or one ended with a result in `stop_on`.
    `wait(seconds)` may return something truthy (a pause, an abort, the end of the rollout): that is returned at
    once."""
    start = clock()
    runs = [CheckRun(c) for c in checks]
    due = {id(r): start + r.check.initial_delay for r in runs}
    while True:
        active = [r for r in runs if r.result is None]
        if not active or any(r.result in stop_on for r in runs):
            return judge(runs)
        nearest = min(due[id(r)] for r in active)
        if nearest > clock():
            halt = wait(nearest - clock())
            if halt:
                return halt
        for r in active:
            if due[id(r)] <= clock():
                m = measure(r.check)
                r.add(m)
                on_measurement(m, r)
                following = due[id(r)] + r.check.interval
                due[id(r)] = following if following > clock() else clock() + r.check.interval  # never a burst
