"""What of the driver (controller.driver.Driver) the steps it hands out use: a wave's recovery, its health checks,
its analysis. A protocol, so those modules need not import the driver (which imports them)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from sqlalchemy.orm import Session

from klpfleet.controller.interrupt import Halt
from klpfleet.controller.lease import Lease
from klpfleet.controller.progress import Progress
from klpfleet.controller.store import RolloutStore
from klpfleet.db.engine import Database
from klpfleet.db.models import Rollout
from klpfleet.runs.types import RunOutcome, RunRequest


class Driving(Protocol):
    id: int
    db: Database
    store: RolloutStore
    lease: Lease
    progress: Progress

    def tx(self) -> AbstractContextManager[Session]: ...
    def event(self, s: Session, kind: str, rollout: Rollout, host: Any = None, **details: Any) -> None: ...
    def wait(self, seconds: float) -> Halt | None: ...
    def request(
        self, playbook: str, hosts: list[str], extravars: dict[str, Any], step: str, forks: int
    ) -> RunRequest: ...
    def ran(self, run: RunOutcome) -> RunOutcome: ...
