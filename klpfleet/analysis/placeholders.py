"""Filling a check's placeholders: the wave's hosts and the control hosts as an escaped regex alternation, the
rollout's id and the wave's number. Nothing else in a query is touched; nothing from a host ever enters one."""

from __future__ import annotations

import re
from dataclasses import dataclass

from klpfleet.analysis.checks import PLACEHOLDER_RE

# Past this a regex of names is the wrong tool (query size, Prometheus' regex cost): the cookbook's join with
# klpfleet_rollout_host works for a wave of any size.
MAX_REGEX = 16 * 1024


class TooLarge(ValueError):
    pass


@dataclass(frozen=True)
class Scope:
    """Who a measurement is about: the wave just patched, the hosts the rollout has not touched yet."""

    rollout: int
    wave: int  # 1-based, as operators count
    wave_hosts: tuple[str, ...]
    control_hosts: tuple[str, ...]


def host_regex(names: tuple[str, ...], placeholder: str) -> str:
    """An RE2 alternation matching exactly these names, escaped for a PromQL string literal ("..." or '...')."""
    alternation = "|".join(re.escape(name) for name in names)
    if len(alternation) > MAX_REGEX:
        raise TooLarge(
            f"${placeholder}: {len(names)} hosts make a regex of {len(alternation)} characters; join with the "
            "klpfleet_rollout_host series instead (docs/operators.md, analysis cookbook)"
        )
    return alternation.replace("\\", "\\\\")


def uses(query: str, placeholder: str) -> bool:
    return placeholder in PLACEHOLDER_RE.findall(query)


def fill(query: str, scope: Scope) -> str:
    values = {"rollout": lambda: str(scope.rollout), "wave": lambda: str(scope.wave)}
    values["wave_hosts"] = lambda: host_regex(scope.wave_hosts, "wave_hosts")
    values["control_hosts"] = lambda: host_regex(scope.control_hosts, "control_hosts")
    return PLACEHOLDER_RE.sub(lambda m: values[m.group(1)]() if m.group(1) in values else m.group(0), query)
