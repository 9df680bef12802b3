"""Which engine runs a rollout's playbooks: Mitogen's strategy where it is installed, else Ansible's own.

Mitogen (`pip install 'klpfleet[fast]'`) keeps one Python interpreter per host for the whole run and sends
module code once, where Ansible starts a new interpreter (and, over SSH, a new remote command) for every
task: the same playbook, the same modules and results, a fraction of the controller's CPU and the wall time.
`auto` picks Mitogen when it can be imported and falls back to Ansible's linear strategy, saying why, when it
cannot or when a run under it fails before any host answered (docs/scale.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from klpfleet.errors import UsageError

ENGINES = ("auto", "mitogen", "ansible")
MITOGEN_STRATEGY = "mitogen_linear"


@dataclass(frozen=True)
class Engine:
    name: str  # what runs the playbooks: mitogen | ansible
    requested: str  # what the operator asked for: auto | mitogen | ansible
    envvars: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # why `auto` did not get Mitogen

    def fallback(self, reason: str) -> Engine:
        """Ansible's own strategy, after Mitogen failed."""
        return Engine("ansible", self.requested, {}, reason)


def mitogen_strategy_dir() -> Path | None:
    """Where Mitogen's Ansible strategy plugins are, or None when Mitogen is not installed."""
    try:
        import ansible_mitogen
    except ImportError:
        return None
    directory = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return directory if (directory / f"{MITOGEN_STRATEGY}.py").is_file() else None


def resolve(requested: str) -> Engine:
    if requested not in ENGINES:
        raise UsageError(f"--engine: {requested!r} is not one of {', '.join(ENGINES)}")
    if requested == "ansible":
        return Engine("ansible", requested)
    strategies = mitogen_strategy_dir()
    if strategies is None:
        reason = "Mitogen is not installed (pip install 'klpfleet[fast]')"
        if requested == "mitogen":
            raise UsageError(f"--engine mitogen: {reason}")
        return Engine("ansible", requested, {}, reason)
    return Engine(
        "mitogen",
        requested,
        {"ANSIBLE_STRATEGY_PLUGINS": str(strategies), "ANSIBLE_STRATEGY": MITOGEN_STRATEGY},
    )


def failed_to_start(status: str, answered: int) -> bool:
    """A run that failed before any host answered: the engine itself did not start (a re-run is safe, since
    no module ran)."""
    return status == "failed" and answered == 0
