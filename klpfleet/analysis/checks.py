"""A rollout's metric checks as the operator wrote them, parsed once into values that cannot be misread.

A check is a PromQL query and a condition on its value (Argo Rollouts' successCondition), measured `count`
times `interval` apart; or a comparison of the wave's query with the same query over the control hosts
(Kayenta's canary against control); or a statistic of the wave's own transition times, which needs no backend.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from klpfleet.errors import UsageError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# Placeholders the controller fills when it measures (klpfleet.analysis.placeholders); any other `$` is refused.
PLACEHOLDERS = ("wave_hosts", "control_hosts", "rollout", "wave")
PLACEHOLDER_RE = re.compile(r"\$(\w+)")
MAX_QUERY = 4096
TRANSITION_STATS = ("p50", "p95", "max")
COMPARISONS = ("ratio", "difference")
_NUMBER = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_BOUND_RE = re.compile(rf"^\s*(<=|>=|<|>)\s*({_NUMBER})\s*$")
_RANGE_RE = re.compile(rf"^\s*({_NUMBER})\s*\.\.\s*({_NUMBER})\s*$")


@dataclass(frozen=True)
class Condition:
    """What a value must satisfy to pass: `< 0.01`, `>= 0.99`, or the inclusive range `0.9..1.1`."""

    text: str
    low: float | None
    high: float | None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def holds(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return not (self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)))


def parse_condition(text: Any, where: str) -> Condition:
    if not isinstance(text, str):
        raise UsageError(f"{where}: a condition is text such as '< 0.01', '>= 0.99' or '0.9..1.1'")
    bound = _BOUND_RE.match(text)
    if bound:
        op, value = bound.group(1), float(bound.group(2))
        if op.startswith("<"):
            return Condition(text.strip(), None, value, high_inclusive=op == "<=")
        return Condition(text.strip(), value, None, low_inclusive=op == ">=")
    span = _RANGE_RE.match(text)
    if span:
        low, high = float(span.group(1)), float(span.group(2))
        if low > high:
            raise UsageError(f"{where}: {text!r} is an empty range (the low end comes first)")
        return Condition(text.strip(), low, high)
    raise UsageError(f"{where}: {text!r} is not a condition (e.g. '< 0.01', '>= 0.99', '0.9..1.1')")


@dataclass(frozen=True)
class Check:
    name: str
    condition: str  # kept as written; parsed again (it parsed once already) when measured
    query: str | None = None
    control: str | None = None  # the same measure over the control hosts: compared, not conditioned
    compare: str = "ratio"  # ratio: wave / control; difference: wave - control; the condition applies to it
    transition: str | None = None  # p50 | p95 | max of the wave's transition times (seconds)
    interval: float = 30.0
    count: int = 3
    initial_delay: float = 0.0
    failure_limit: int = 0  # failed measurements the check tolerates; one more fails it
    inconclusive_limit: int = 0  # inconclusive measurements it tolerates; one more makes it inconclusive
    consecutive_error_limit: int = 2  # backend errors in a row it tolerates; one more makes it inconclusive
    background: bool = False  # measured the whole rollout long (count ignored), not in each wave's bake

    @property
    def parsed_condition(self) -> Condition:
        return parse_condition(self.condition, self.name)

    @property
    def needs_backend(self) -> bool:
        return self.transition is None

    def to_json(self) -> dict[str, Any]:
        """What parse_check reads back to this same check (a rollout's stored policy is read as hostile)."""
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if self.control is None:
            del data["compare"]
        return data

    def duration(self) -> float:
        """The longest it takes when every measurement is taken: the bake this check needs at least."""
        return self.initial_delay + self.interval * max(0, self.count - 1)


def _query(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{where}: a PromQL query is non-empty text")
    if len(value) > MAX_QUERY:
        raise UsageError(f"{where}: longer than {MAX_QUERY} characters")
    for name in PLACEHOLDER_RE.findall(value):
        if name not in PLACEHOLDERS:
            known = ", ".join(f"${p}" for p in PLACEHOLDERS)
            raise UsageError(f"{where}: ${name} is not a placeholder klpfleet fills (it fills {known})")
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise UsageError(f"{where}: control characters in a query")
    return value


def _limit(value: Any, where: str, default: int, high: int = 1000) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise UsageError(f"{where}: a whole number from 0 to {high}")
    return value


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise UsageError(f"{where}: true or false")
    return value


def parse_check(doc: Any, where: str, duration: Any) -> Check:
    """One check from its mapping (keys already checked by the policy schema); `duration` parses '30s'."""
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: a check is a mapping")
    name = doc.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(f"{where}.name: {name!r} is not a check name (a-z, 0-9, '_', '.', '-'; 64 at most)")
    where = f"{where} ({name})"
    kinds = [k for k in ("query", "transition") if doc.get(k) is not None]
    if len(kinds) != 1:
        raise UsageError(f"{where}: give exactly one of query or transition")
    if "condition" not in doc:
        raise UsageError(f"{where}.condition: required (e.g. '< 0.01')")
    parse_condition(doc["condition"], f"{where}.condition")
    transition = doc.get("transition")
    if transition is not None and transition not in TRANSITION_STATS:
        raise UsageError(f"{where}.transition: {transition!r} is not one of {', '.join(TRANSITION_STATS)}")
    query = _query(doc["query"], f"{where}.query") if doc.get("query") is not None else None
    control = _query(doc["control"], f"{where}.control") if doc.get("control") is not None else None
    if control is not None and query is None:
        raise UsageError(f"{where}.control: compares a query's value; a transition check has none")
    compare = doc.get("compare", "ratio")
    if compare not in COMPARISONS:
        raise UsageError(f"{where}.compare: {compare!r} is not one of {', '.join(COMPARISONS)}")
    if "compare" in doc and control is None:
        raise UsageError(f"{where}.compare: needs a control query to compare with")

    def seconds(key: str, default: float) -> float:
        value = doc.get(key)
        if value is None:
            return default
        return (
            float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else duration(str(value), f"{where}.{key}")
        )

    interval = seconds("interval", 30.0)
    if not 0.1 <= interval <= 3600:
        raise UsageError(f"{where}.interval: between 0.1s and 1h")
    count = _limit(doc.get("count"), f"{where}.count", 1 if transition else 3, 1000)  # transitions are history
    if count < 1:
        raise UsageError(f"{where}.count: at least 1 measurement")
    check = Check(
        name=name,
        condition=doc["condition"].strip(),
        query=query,
        control=control,
        compare=compare,
        transition=transition,
        interval=interval,
        count=count,
        initial_delay=seconds("initial_delay", 0.0),
        failure_limit=_limit(doc.get("failure_limit"), f"{where}.failure_limit", 0),
        inconclusive_limit=_limit(doc.get("inconclusive_limit"), f"{where}.inconclusive_limit", 0),
        consecutive_error_limit=_limit(doc.get("consecutive_error_limit"), f"{where}.consecutive_error_limit", 2),
        background=_flag(doc.get("background"), f"{where}.background"),
    )
    if check.background and check.transition:
        raise UsageError(f"{where}.background: a transition check judges a wave's own history, in its bake")
    if not math.isfinite(check.initial_delay) or check.duration() > 24 * 3600:
        raise UsageError(f"{where}: its measurements would take longer than a day")
    return check


def parse_checks(docs: Any, duration: Any) -> list[Check]:
    if not isinstance(docs, list):
        raise UsageError("analysis: a list of checks")
    checks = [parse_check(doc, f"analysis[{i}]", duration) for i, doc in enumerate(docs)]
    names = [c.name for c in checks]
    for name in names:
        if names.count(name) > 1:
            raise UsageError(f"analysis: two checks are named {name!r}")
    return checks
