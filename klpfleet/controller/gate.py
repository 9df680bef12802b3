"""A wave's gate: from its hosts' final outcomes, the policy and the operator's overrides, what happens next.

Pure: no database, no clock. The driver records the decision and acts on it; tests/test_gate.py holds the
table of cases (every budget kind, percentages, --full, overrides, on-failure and on-refusal modes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from klpfleet.analysis.measure import Analysis, Result, transition_stats
from klpfleet.controller.policy import Policy, budget


@dataclass
class WaveCounts:
    total: int
    applied: int = 0
    refused: int = 0
    pending: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # hard failures by outcome (stalled, unreachable, ...)
    transitions: list[float] = field(default_factory=list)  # seconds, per applied host that reported one

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "applied": self.applied,
            "refused": self.refused,
            "failed": self.failed,
            "pending": self.pending,
            "failures": dict(self.failures),
            **({"transition": transition_stats(self.transitions)} if self.transitions else {}),
        }

    def failures_text(self) -> str:
        return ", ".join(f"{outcome} {n}" for outcome, n in sorted(self.failures.items()))


@dataclass(frozen=True)
class Control:
    """What operators decided while the rollout runs (stored in the rollout's own columns, not its policy)."""

    promoted_full: bool = False  # `promote --full`: no more pauses, bakes or refusal gates
    overridden_waves: frozenset[int] = frozenset()  # 0-based waves whose gate an operator overrode (`promote`)


class Verdict(StrEnum):
    CONTINUE = "continue"  # the wave completes; the next one (after the bake) starts
    PAUSE = "pause"  # the rollout pauses; the wave stays blocked until promoted
    ROLLBACK = "rollback"  # every host this rollout applied is rolled back, last wave first


@dataclass(frozen=True)
class GateDecision:
    verdict: Verdict
    reason: str | None
    max_failed: int | None
    max_refused: int | None
    failed_breach: bool
    refused_breach: bool
    overridden: bool
    analysis: str | None = None  # passed | failed | inconclusive, when the wave's checks were measured

    def details(self) -> dict[str, Any]:
        return {
            **({"analysis": self.analysis} if self.analysis else {}),
            "verdict": self.verdict.value,
            "max_failed": self.max_failed,
            "max_refused": self.max_refused,
            "failed_breach": self.failed_breach,
            "refused_breach": self.refused_breach,
            "overridden": self.overridden,
        }


def decide_gate(index: int, counts: WaveCounts, policy: Policy, control: Control) -> GateDecision:
    """The gate of wave `index` (0-based)."""
    max_failed = budget(policy.max_failed, counts.total)
    max_refused = budget(policy.max_refused, counts.total)
    failed_breach = max_failed is not None and counts.failed > max_failed
    refused_breach = max_refused is not None and counts.refused > max_refused
    overridden = index in control.overridden_waves

    def decision(verdict: Verdict, reason: str | None) -> GateDecision:
        return GateDecision(verdict, reason, max_failed, max_refused, failed_breach, refused_breach, overridden)

    if failed_breach and not overridden:
        reason = (
            f"wave {index + 1}: {counts.failed} hard failure(s) ({counts.failures_text()}) "
            f"exceed the budget of {max_failed}"
        )
        if policy.on_failure == "rollback":
            return decision(Verdict.ROLLBACK, reason)  # --full never overrides a rollback policy
        if control.promoted_full:
            return decision(Verdict.CONTINUE, f"{reason}; promoted --full, so the rollout goes on")
        return decision(Verdict.PAUSE, reason)
    if refused_breach and not overridden and policy.on_refusal == "pause" and not control.promoted_full:
        return decision(
            Verdict.PAUSE, f"wave {index + 1}: {counts.refused} refusal(s) exceed the budget of {max_refused}"
        )
    return decision(Verdict.CONTINUE, None)


def with_analysis(index: int, decision: GateDecision, analysis: Analysis, policy: Policy) -> GateDecision:
    """The gate once the wave's checks are judged: failed -> the policy's --on-failure, inconclusive -> pause (an
    unknown is never a pass), passed -> the gate's own verdict."""
    verdict, reason = decision.verdict, decision.reason
    if analysis.result == Result.FAILED:
        verdict = Verdict.ROLLBACK if policy.on_failure == "rollback" else Verdict.PAUSE
        reason = f"wave {index + 1}: analysis failed: {analysis.reason}"
    elif analysis.result == Result.INCONCLUSIVE:
        verdict, reason = Verdict.PAUSE, f"wave {index + 1}: analysis inconclusive: {analysis.reason}"
    return replace(decision, verdict=verdict, reason=reason, analysis=analysis.result.value)
