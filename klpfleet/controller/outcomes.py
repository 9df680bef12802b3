"""A wave host's outcome from one host's result of apply.yml: the module names it; the run's own statuses
(unreachable, lost on a failed execution node) say the rest."""

from __future__ import annotations

from typing import Any

from klpfleet.analysis.measure import transition_seconds
from klpfleet.runs.types import HostResult, RunOutcome
from klpfleet.states import FAILURE_OUTCOME_STATES, Outcome
from klpfleet.wording import counted


def outcome_of(r: HostResult) -> tuple[Outcome, str | None]:
    """(wave host outcome, klp_error)."""
    if r.status == "ok":
        return Outcome.APPLIED, None
    if r.status in ("unreachable", "lost"):  # lost: in flight on an execution node that failed
        return Outcome.UNREACHABLE, r.klp_error
    named = r.result.get("outcome")
    return (Outcome(named) if named in FAILURE_OUTCOME_STATES else Outcome.FAILED), r.klp_error


def transition_of(r: HostResult) -> float | None:
    """How long the host's transition took, as its module said: a finite, plausible number of seconds or nothing."""
    return transition_seconds(r.result.get("transition_seconds"))


def node_failure_report(run: RunOutcome, rollout_id: int) -> tuple[list[dict[str, Any]], str | None]:
    """What the run's failed execution nodes did: an event's details per node, and, when one left hosts in flight,
    why the rollout pauses. What the job did to those hosts is unknown until they are read again, which
    `rollout resume` does first (they count as unreachable meanwhile, never as applied)."""
    failed = run.node_failures()
    lost: dict[str, list[str]] = {}
    for name, result in run.results.items():
        if result.status == "lost":
            lost.setdefault(str(result.result.get("node")), []).append(name)
    details = [
        {"node": node, "failure": r.failure, "detail": r.detail, "in_flight": len(lost.get(node, []))}
        for node, r in failed.items()
    ]
    if not lost:
        return details, None
    said = "; ".join(
        f"execution node {node} {failed[node].failure if node in failed else 'failed'} "
        f"with {counted(len(names), 'host')} in flight"
        for node, names in sorted(lost.items())
    )
    return details, f"{said}: `klpfleet rollout resume {rollout_id}` reads them again before anything else"
