"""One driver per rollout: a lease (owner, expiry, fencing token) taken by one conditional UPDATE.

Works the same on PostgreSQL and SQLite (which has no SELECT ... FOR UPDATE): the UPDATE's rowcount
says who won. A heartbeat renews the lease; every write the driver makes checks the token, so a driver
that lost its lease (paused by a debugger, partitioned from the database) can never write over the one
that took over.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from klpfleet.db.engine import Database
from klpfleet.db.models import Rollout, utcnow
from klpfleet.errors import KlpfleetError

LEASE_SECONDS = 30.0


class LeaseHeld(KlpfleetError):
    exit_code = 2


class LeaseLost(KlpfleetError):
    exit_code = 2


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(self, db: Database, rollout_id: int, seconds: float | None = None) -> None:
        self.db = db
        self.rollout_id = rollout_id
        # How long a dead controller keeps others out; the heartbeat renews it every third of that.
        self.seconds = seconds or float(os.environ.get("KLPFLEET_LEASE_SECONDS", LEASE_SECONDS))
        self.owner = owner_id()
        self.token: int | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> int:
        now = utcnow()
        with self.db.session.begin() as s:
            result = s.execute(
                update(Rollout)
                .where(Rollout.id == self.rollout_id, (Rollout.lease_owner.is_(None)) | (Rollout.lease_expires < now))
                .values(
                    lease_owner=self.owner,
                    lease_expires=now + timedelta(seconds=self.seconds),
                    lease_token=Rollout.lease_token + 1,
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                holder = s.execute(
                    select(Rollout.lease_owner, Rollout.lease_expires).where(Rollout.id == self.rollout_id)
                ).one_or_none()
                if holder is None:
                    raise KlpfleetError(f"no rollout {self.rollout_id}")
                raise LeaseHeld(
                    f"rollout {self.rollout_id} is being driven by {holder[0]} (lease until "
                    f"{holder[1]:%H:%M:%SZ}); wait for it, or pause it with `klpfleet rollout pause "
                    f"{self.rollout_id}`"
                )
            self.token = s.scalar(select(Rollout.lease_token).where(Rollout.id == self.rollout_id))
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.rollout_id}", daemon=True)
        self._thread.start()
        return self.token  # type: ignore[return-value]

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.renew():
                    self.lost.set()
                    return
            except Exception:  # noqa: S112 - the database is away: keep trying until the lease would expire
                continue

    def renew(self) -> bool:
        with self.db.session.begin() as s:
            result = s.execute(
                update(Rollout)
                .where(
                    Rollout.id == self.rollout_id, Rollout.lease_owner == self.owner, Rollout.lease_token == self.token
                )
                .values(lease_expires=utcnow() + timedelta(seconds=self.seconds))
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def check(self, s: Session) -> Rollout:
        """Inside a driver transaction: the rollout row, if this lease still holds it."""
        query = select(Rollout).where(Rollout.id == self.rollout_id)
        if self.db.engine.dialect.name == "postgresql":
            query = query.with_for_update()
        rollout = s.scalar(query)
        if rollout is None or rollout.lease_owner != self.owner or rollout.lease_token != self.token:
            self.lost.set()
            raise LeaseLost(f"lost the lease on rollout {self.rollout_id}: another controller took it over")
        return rollout

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self.db.session.begin() as s:
            s.execute(
                update(Rollout)
                .where(
                    Rollout.id == self.rollout_id, Rollout.lease_owner == self.owner, Rollout.lease_token == self.token
                )
                .values(lease_owner=None, lease_expires=None)
                .execution_options(synchronize_session=False)
            )

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
