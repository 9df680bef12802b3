"""What a run is asked and what it answers: one playbook over exactly these hosts, and per host what happened."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from klpfleet.db.engine import Database, default_data_dir
from klpfleet.runs.engine import Engine


@dataclass
class HostResult:
    host: str
    status: str  # ok | failed | unreachable | missing | lost (in flight on an execution node that failed)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def klp_error(self) -> str | None:
        value = self.result.get("klp_error")
        return value if isinstance(value, str) else None


@dataclass
class RunOutcome:
    results: dict[str, HostResult]
    status: str  # ansible-runner's: successful | failed | canceled | timeout
    rc: int | None
    directory: Path
    engine: str = "ansible"  # what ran it: mitogen | ansible
    fallback: str | None = None  # why Mitogen was given up for Ansible's own strategy during this run
    nodes: dict[str, Any] = field(default_factory=dict)  # execution node -> its NodeRun, when nodes ran it

    def node_failures(self) -> dict[str, Any]:
        return {name: run for name, run in self.nodes.items() if run.failure}


@dataclass(frozen=True)
class RunRequest:
    """One playbook over exactly these hosts, in a new folder under `runs_in` named after `ident`."""

    db: Database
    playbook: str
    records: list[dict[str, Any]]
    extravars: dict[str, Any]
    runs_in: Path
    ident: str
    forks: int
    rollout_id: int | None = None
    cancel: Callable[[], bool] | None = None  # polled during the run: True stops it (pause, abort, lease lost)
    engine: Engine | None = None  # None: Mitogen where installed, else Ansible's own strategy

    def run(self, playbook: str, records: list[dict[str, Any]], extravars: dict[str, Any], step: str) -> RunRequest:
        """This request's settings (database, folder, forks, rollout, cancel, engine) for another playbook and
        hosts: one of the several runs a rollout or a rollback is made of, its ident `<ident>-<step>`."""
        return replace(self, playbook=playbook, records=records, extravars=extravars, ident=f"{self.ident}-{step}")


def runs_dir(db: Database) -> Path:
    """Run folders of one database: two databases never share one, whatever their rollout ids."""
    base = Path(os.environ.get("KLPFLEET_RUN_DIR") or default_data_dir() / "runs")
    return base / db.identity


def new_run_dir(parent: Path, name: str) -> Path:
    """A folder no earlier run used: ansible-runner reuses whatever it finds in a private data dir."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
