"""A wave's analysis: the policy's checks measured after the wave passed its budgets, during its bake, each
measurement an event. A pause or an abort during it stops it; the wave is analysed again from the start when the
rollout resumes (its verdict was never recorded, so nothing is half-judged)."""

from __future__ import annotations

import time
from typing import Any

from klpfleet.analysis.checks import Check
from klpfleet.analysis.measure import Analysis, CheckRun, Measurement, run_checks, shown_query, take
from klpfleet.analysis.placeholders import Scope
from klpfleet.analysis.prometheus import Prometheus
from klpfleet.controller.driving import Driving
from klpfleet.controller.gate import GateDecision, Verdict, WaveCounts, decide_gate, with_analysis
from klpfleet.controller.interrupt import Halt
from klpfleet.controller.policy import Policy
from klpfleet.states import Outcome


def analysed(driver: Driving, wave_id: int, index: int, policy: Policy, counts: WaveCounts) -> GateDecision | Halt:
    """The gate's decision (decide_gate) once the wave's checks are judged (a wave its budgets stopped, an
    overridden gate and `promote --full` are not analysed), or the pause or abort that stopped the analysis."""
    control = driver.store.control()
    decision = decide_gate(index, counts, policy, control)
    checks = policy.bake_checks()
    if decision.verdict != Verdict.CONTINUE or not checks or decision.overridden or control.promoted_full:
        return decision
    analysis = analyse_wave(driver, wave_id, index, policy, checks, counts.transitions)
    if analysis == Halt.PROMOTED:
        return decision
    if isinstance(analysis, Halt):
        return analysis
    return with_analysis(index, decision, analysis, policy)


def analyse_wave(
    driver: Driving, wave_id: int, index: int, policy: Policy, checks: list[Check], transitions: list[float]
) -> Analysis | Halt:
    """The wave's checks to their verdict, or the Halt that stopped them."""
    scope = Scope(
        rollout=driver.id,
        wave=index + 1,
        wave_hosts=tuple(driver.store.hosts_where_outcome(wave_id, Outcome.APPLIED)),
        control_hosts=tuple(driver.store.control_hosts(index)),
    )
    backend = Prometheus(policy.prometheus) if policy.prometheus else None
    with driver.tx() as s:
        driver.event(
            s,
            "analysis.started",
            driver.lease.check(s),
            wave=index + 1,
            checks=[c.name for c in checks],
            wave_hosts=len(scope.wave_hosts),
            control_hosts=len(scope.control_hosts),
        )
    driver.progress.note(f"analysing wave {index + 1}: {', '.join(c.name for c in checks)}")

    def on_measurement(m: Measurement, run: CheckRun) -> None:
        with driver.tx() as s:
            r = driver.lease.check(s)
            driver.event(s, "analysis.measured", r, wave=index + 1, query=shown_query(run.check), **m.details())
            if run.result is not None:
                driver.event(s, "analysis.check_ended", r, wave=index + 1, **run.details())
        said = f"{m.value:g}" if m.value is not None else "no value"
        driver.progress.note(f"  {m.check}: {said} {m.result}" + (f" ({m.reason})" if m.reason else ""))

    def wait(seconds: float) -> Any:
        halt = driver.wait(seconds)
        if halt is None and driver.store.control().promoted_full:
            return Halt.PROMOTED
        return halt

    started = time.monotonic()
    outcome = run_checks(checks, lambda c: take(c, backend, scope, transitions), wait, on_measurement)
    if isinstance(outcome, Halt):
        return outcome
    with driver.tx() as s:
        driver.event(
            s,
            "analysis.ended",
            driver.lease.check(s),
            wave=index + 1,
            result=outcome.result.value,
            reason=outcome.reason,
            seconds=round(time.monotonic() - started, 1),
        )
    return outcome
