"""The gate decision, table-driven: every budget kind (counts and percentages), refusals under each
on-refusal mode, on-failure pause or rollback, an operator's override of one wave, and --full."""

import pytest

from klpfleet.controller.gate import Control, Verdict, WaveCounts, decide_gate
from klpfleet.controller.policy import Policy

FULL = Control(promoted_full=True)
OVERRIDE_W2 = Control(overridden_waves=frozenset({1}))

CASES = [
    # id, policy, counts (total, applied, refused, failures), control, wave index, verdict, reason contains
    ("clean wave", {}, (10, 10, 0, {}), Control(), 0, Verdict.CONTINUE, None),
    ("default budget: any failure pauses", {}, (10, 9, 0, {"failed": 1}), Control(), 0, Verdict.PAUSE, "failed 1"),
    ("count budget not exceeded", {"max_failed": 2}, (10, 8, 0, {"stalled": 2}), Control(), 0, Verdict.CONTINUE, None),
    (
        "count budget exceeded",
        {"max_failed": 2},
        (10, 7, 0, {"stalled": 2, "unreachable": 1}),
        Control(),
        2,
        Verdict.PAUSE,
        "wave 3: 3 hard failure(s) (stalled 2, unreachable 1) exceed the budget of 2",
    ),
    (
        "percentage budget, rounded down",
        {"max_failed": "25%"},
        (10, 8, 0, {"failed": 2}),
        Control(),
        0,
        Verdict.CONTINUE,
        None,
    ),
    (
        "percentage budget exceeded",
        {"max_failed": "25%"},
        (10, 7, 0, {"failed": 3}),
        Control(),
        0,
        Verdict.PAUSE,
        "budget of 2",
    ),
    ("unlimited failures", {"max_failed": None}, (4, 0, 0, {"failed": 4}), Control(), 0, Verdict.CONTINUE, None),
    (
        "on failure rollback",
        {"on_failure": "rollback"},
        (10, 9, 0, {"health_failed": 1}),
        Control(),
        1,
        Verdict.ROLLBACK,
        "health_failed 1",
    ),
    (
        "--full never overrides rollback",
        {"on_failure": "rollback"},
        (10, 9, 0, {"failed": 1}),
        FULL,
        1,
        Verdict.ROLLBACK,
        None,
    ),
    ("--full goes past a failure pause", {}, (10, 9, 0, {"failed": 1}), FULL, 1, Verdict.CONTINUE, "promoted --full"),
    ("an overridden wave passes", {}, (10, 9, 0, {"failed": 1}), OVERRIDE_W2, 1, Verdict.CONTINUE, None),
    ("an override is for its wave only", {}, (10, 9, 0, {"failed": 1}), OVERRIDE_W2, 2, Verdict.PAUSE, None),
    ("refusals without a budget", {}, (10, 0, 10, {}), Control(), 0, Verdict.CONTINUE, None),
    ("refusal budget exceeded, continue", {"max_refused": 1}, (10, 8, 2, {}), Control(), 0, Verdict.CONTINUE, None),
    (
        "refusal budget exceeded, pause",
        {"max_refused": 1, "on_refusal": "pause"},
        (10, 8, 2, {}),
        Control(),
        0,
        Verdict.PAUSE,
        "2 refusal(s) exceed the budget of 1",
    ),
    (
        "refusal percentage within",
        {"max_refused": "20%", "on_refusal": "pause"},
        (10, 8, 2, {}),
        Control(),
        0,
        Verdict.CONTINUE,
        None,
    ),
    (
        "--full skips refusal pauses",
        {"max_refused": 0, "on_refusal": "pause"},
        (10, 9, 1, {}),
        FULL,
        0,
        Verdict.CONTINUE,
        None,
    ),
    (
        "failures decide before refusals",
        {"max_refused": 0, "on_refusal": "pause", "on_failure": "rollback"},
        (10, 8, 1, {"failed": 1}),
        Control(),
        0,
        Verdict.ROLLBACK,
        "hard failure",
    ),
]


@pytest.mark.parametrize(
    "policy,counts,control,index,verdict,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_gate(policy, counts, control, index, verdict, reason):
    total, applied, refused, failures = counts
    decision = decide_gate(index, WaveCounts(total, applied, refused, 0, dict(failures)), Policy(**policy), control)
    assert decision.verdict == verdict
    if reason is None:
        assert verdict != Verdict.CONTINUE or decision.reason is None or "promoted" in decision.reason
    else:
        assert reason in decision.reason
    assert decision.details()["verdict"] == verdict.value


@pytest.mark.parametrize(
    ("status", "outcome", "counted"),
    [
        ("pending", None, "pending"),
        ("running", None, "running"),
        ("running", "unreachable", "unreachable"),  # left in flight by a failed execution node
        ("done", "refused", "refused"),
        ("rolled_back", "applied", "rolled_back"),
    ],
)
def test_one_rule_counts_a_wave_host_for_the_gate_the_status_and_the_metrics(status, outcome, counted):
    from klpfleet.states import counted_as

    assert counted_as(status, outcome) == counted
