"""Rollout policy: parsing what the operator typed into numbers, and Ansible `serial` batch sizes."""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from klpfleet.analysis.checks import Check, parse_checks
from klpfleet.analysis.prometheus import check_url
from klpfleet.errors import UsageError
from klpfleet.runs.engine import resolve as resolve_engine


def parse_duration(text: str, what: str) -> float:
    """Seconds in a duration as people write them: 30s, 5m, 1h30m, 1.5h, 250ms, "2 hours" (pytimeparse2)."""
    from pytimeparse2 import parse

    seconds = parse(text.strip()) if text.strip() else None
    if seconds is None or seconds < 0:
        raise UsageError(f"{what}: {text!r} is not a duration (e.g. 30s, 5m, 1h30m)")
    seconds = float(seconds)
    if seconds > 7 * 24 * 3600:
        raise UsageError(f"{what}: {text!r} is longer than a week")
    return seconds


def parse_count(text: str, what: str) -> int | str:
    """N or P% (kept as the string 'P%')."""
    text = text.strip()
    if text.endswith("%"):
        number = text[:-1]
        if not re.match(r"^[0-9]+(\.[0-9]+)?$", number) or not 0 < float(number) <= 100:
            raise UsageError(f"{what}: {text!r} is not a percentage between 0 and 100")
        return text
    if not (text.isascii() and text.isdigit()):  # superscripts and other scripts' digits are digits to isdigit
        raise UsageError(f"{what}: {text!r} is neither a number nor a percentage")
    return int(text)


def parse_waves(text: str) -> list[int | str]:
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    if not items:
        raise UsageError("--waves: give at least one wave size, e.g. 1,10%,50%,100%")
    sizes = [parse_count(item, "--waves") for item in items]
    if any(size == 0 for size in sizes):
        raise UsageError("--waves: a wave of 0 hosts makes no sense")
    return sizes


def pct_to_int(value: int | str, total: int) -> int:
    """Ansible's serial arithmetic: a percentage of the total, rounded down, at least 1."""
    if isinstance(value, str):
        return max(1, int(float(value[:-1]) / 100.0 * total))
    return value


def budget(value: int | str | None, wave_size: int) -> int | None:
    """How many hosts of a wave may fail (None: no limit)."""
    if value is None:
        return None
    if isinstance(value, str):
        return int(float(value[:-1]) / 100.0 * wave_size)
    return value


@dataclass
class Policy:
    waves: list[int | str] = field(default_factory=lambda: [1, "10%", "50%", "100%"])
    by: str | None = None
    max_failed: int | str | None = 0
    max_refused: int | str | None = None
    bake_seconds: float = 0.0
    health_check: list[str] | None = None
    on_failure: str = "pause"
    on_refusal: str = "continue"
    retry_refused: int = 0
    retry_delay_seconds: float = 60.0
    forks: int = 20
    transition_timeout: float = 60.0
    on_stall: str = "reverse"
    allow_force: bool = False
    busy_retries: int = 5
    busy_delay: float = 2.0
    engine: str = "auto"  # auto | mitogen | ansible (runs/engine.py)
    prometheus: str | None = None  # the base URL the analysis checks query
    analysis: list[dict[str, Any]] = field(default_factory=list)  # klpfleet.analysis.checks.Check, as JSON

    def checks(self) -> list[Check]:
        """The analysis checks, parsed again: a stored policy is a database row, read as hostile (one that does not
        parse pauses the rollout with the reason, as any bad value a run would be given does)."""
        from klpfleet.runs.variables import RunVarsError

        try:
            return parse_checks(self.analysis, parse_duration)
        except UsageError as exc:
            raise RunVarsError(f"the rollout's stored analysis: {exc}") from None

    def bake_checks(self) -> list[Check]:
        """The checks measured in each wave's bake (the others: controller.background_analysis)."""
        return [c for c in self.checks() if not c.background] if self.analysis else []

    def apply_vars(self, patch_name: str, sha256: str) -> dict[str, Any]:
        """apply.yml's extra vars for a patch under this policy."""
        from klpfleet.runs.variables import patch_vars

        return {
            **patch_vars(patch_name, sha256),
            "klp_transition_timeout": self.transition_timeout,
            "klp_on_stall": self.on_stall,
            "klp_allow_force": self.allow_force,
            "klp_busy_retries": self.busy_retries,
            "klp_busy_delay": self.busy_delay,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def build_policy(
    *,
    waves: str = "1,10%,50%,100%",
    by: str | None = None,
    max_failed: str | None = None,
    max_refused: str | None = None,
    bake: str | None = None,
    health_check: str | None = None,
    on_failure: str = "pause",
    on_refusal: str = "continue",
    retry_refused: int = 0,
    retry_delay: str | None = None,
    forks: int = 20,
    transition_timeout: str | None = None,
    on_stall: str = "reverse",
    allow_force: bool = False,
    engine: str = "auto",
    prometheus: str | None = None,
    analysis: Any = None,
    policy: Any = None,  # the file it came from (cli.rollout_options reads it); not part of the policy
) -> Policy:
    """A policy from what the operator typed; the defaults are `rollout create`'s."""
    if on_stall == "force" and not allow_force:
        raise UsageError("--on-stall force needs --allow-force: a forced patch can never be removed before a reboot")
    resolve_engine(engine)  # refuses an unknown engine, or Mitogen asked for where it is not installed
    if forks < 1 or forks > 500:
        raise UsageError("--forks must be between 1 and 500")
    if retry_refused < 0 or retry_refused > 20:
        raise UsageError("--retry-refused must be between 0 and 20")
    argv = None
    if health_check is not None:
        try:
            argv = shlex.split(health_check)
        except ValueError as exc:
            raise UsageError(f"--health-check: {exc}") from None
        if not argv:
            raise UsageError("--health-check: empty command")
    checks = parse_checks(analysis, parse_duration) if analysis is not None else []
    if prometheus is not None:
        try:
            prometheus = check_url(prometheus)
        except ValueError as exc:
            raise UsageError(f"--prometheus: {exc}") from None
    needs = [c.name for c in checks if c.needs_backend]
    if needs and prometheus is None:
        raise UsageError(f"analysis: {', '.join(needs)} query Prometheus: give --prometheus URL (or prometheus:)")
    if by is not None and not re.match(r"^[A-Za-z0-9_]{1,64}$", by):
        raise UsageError(f"--by: {by!r} is not a label name")
    return Policy(
        waves=parse_waves(waves),
        by=by,
        max_failed=parse_count(max_failed, "--max-failed") if max_failed is not None else 0,
        max_refused=parse_count(max_refused, "--max-refused") if max_refused is not None else None,
        bake_seconds=parse_duration(bake, "--bake") if bake else 0.0,
        health_check=argv,
        on_failure=on_failure,
        on_refusal=on_refusal,
        retry_refused=retry_refused,
        retry_delay_seconds=parse_duration(retry_delay, "--retry-delay") if retry_delay else 60.0,
        forks=forks,
        transition_timeout=parse_duration(transition_timeout, "--transition-timeout") if transition_timeout else 60.0,
        on_stall=on_stall,
        allow_force=allow_force,
        engine=engine,
        prometheus=prometheus,
        analysis=[c.to_json() for c in checks],
    )


def serial_batches(hosts: list[str], sizes: list[int | str], domains: dict[str, str] | None = None) -> list[list[str]]:
    """Split hosts into waves as Ansible's `serial` does (the last size repeats). With domains, a wave
    never crosses from one failure domain into the next: it ends at the boundary."""
    total = len(hosts)
    batches: list[list[str]] = []
    i = 0
    step = 0
    while i < total:
        size = pct_to_int(sizes[min(step, len(sizes) - 1)], total)
        batch = hosts[i : i + size]
        if domains is not None:
            first = domains[batch[0]]
            batch = [h for h in batch if domains[h] == first]
            # hosts are ordered by domain, so the cut keeps a contiguous run
        batches.append(batch)
        i += len(batch)
        step += 1
    return batches
