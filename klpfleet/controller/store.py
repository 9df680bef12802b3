"""The driver's queries of one rollout, typed: its policy and operators' control, its status, its waves and their
hosts. Reads open their own session; writes take the driver's transaction (the one that also checks the lease)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from klpfleet.analysis.measure import transition_seconds
from klpfleet.controller.gate import Control, WaveCounts
from klpfleet.controller.policy import Policy
from klpfleet.db.engine import Database
from klpfleet.db.models import Host, HostPatch, Rollout, Wave, WaveHost
from klpfleet.registry.blocks import block_sentence
from klpfleet.states import HARD_FAILURES, Outcome, RolloutStatus, WaveHostStatus, WaveStatus, counted_as

# What counted_as gives for a host without a final outcome (a rolled-back host no longer counts for a gate).
NOT_FINISHED = frozenset(s.value for s in WaveHostStatus)


class RolloutStore:
    def __init__(self, db: Database, rollout_id: int) -> None:
        self.db = db
        self.id = rollout_id

    def _rollout(self, s: Session) -> Rollout:
        r = s.get(Rollout, self.id)
        assert r is not None, f"rollout {self.id} vanished"
        return r

    def policy(self) -> Policy:
        with self.db.session() as s:
            return Policy.from_json(self._rollout(s).policy)

    def control(self) -> Control:
        with self.db.session() as s:
            r = self._rollout(s)
            return Control(promoted_full=r.promoted_full, overridden_waves=frozenset(r.gate_overrides or []))

    def status(self) -> RolloutStatus:
        with self.db.session() as s:
            return RolloutStatus(self._rollout(s).status)

    def blocked(self) -> str | None:
        """The block's sentence when the rollout's patch is blocked (`klpfleet patch block`)."""
        with self.db.session() as s:
            patch = self._rollout(s).patch
            return block_sentence(patch) if patch is not None and patch.blocked_at is not None else None

    def next_wave(self) -> tuple[int, int] | None:
        """(id of the first wave not completed, number of waves), or None when every wave completed."""
        with self.db.session() as s:
            waves = s.execute(select(Wave.id, Wave.status).where(Wave.rollout_id == self.id).order_by(Wave.index)).all()
        open_ = [wave_id for wave_id, status in waves if status != WaveStatus.COMPLETED]
        return (open_[0], len(waves)) if open_ else None

    def is_last_wave(self, index: int) -> bool:
        with self.db.session() as s:
            return s.scalar(select(Wave.id).where(Wave.rollout_id == self.id, Wave.index > index).limit(1)) is None

    def hosts_with(self, wave_id: int, *statuses: WaveHostStatus) -> list[str]:
        return self._hosts(wave_id, WaveHost.status.in_([str(s) for s in statuses]))

    def hosts_where_outcome(self, wave_id: int, outcome: Outcome) -> list[str]:
        return self._hosts(wave_id, WaveHost.outcome == outcome.value)

    def _hosts(self, wave_id: int, condition: object) -> list[str]:
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(Host.name)
                    .join(WaveHost, WaveHost.host_id == Host.id)
                    .where(WaveHost.wave_id == wave_id, condition)  # type: ignore[arg-type]
                    .order_by(Host.name)
                )
            )

    def counts(self, wave_id: int) -> WaveCounts:
        """A wave's hosts by final outcome: the gate's input."""
        with self.db.session() as s:
            rows = s.execute(
                select(WaveHost.status, WaveHost.outcome, WaveHost.transition_seconds).where(
                    WaveHost.wave_id == wave_id
                )
            ).all()
        c = WaveCounts(total=len(rows))
        for status, outcome, seconds in rows:
            key = counted_as(status, outcome)
            believed = transition_seconds(seconds)  # a row, read as hostile
            if key == Outcome.APPLIED and believed is not None:
                c.transitions.append(believed)
            if key in NOT_FINISHED:
                c.pending += 1
            elif key == Outcome.APPLIED:
                c.applied += 1
            elif key == Outcome.REFUSED:
                c.refused += 1
            elif key in HARD_FAILURES:
                c.failures[key] = c.failures.get(key, 0) + 1
        return c

    def control_hosts(self, index: int) -> list[str]:
        """The rollout's hosts in the waves after `index` that nothing touched yet: the control group."""
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(Host.name)
                    .join(WaveHost, WaveHost.host_id == Host.id)
                    .join(Wave, Wave.id == WaveHost.wave_id)
                    .where(
                        WaveHost.rollout_id == self.id,
                        Wave.index > index,
                        WaveHost.status == WaveHostStatus.PENDING,
                    )
                    .order_by(Host.name)
                )
            )

    @staticmethod
    def wave_host(s: Session, wave_id: int, name: str) -> WaveHost:
        wh = s.scalar(
            select(WaveHost)
            .join(Host, Host.id == WaveHost.host_id)
            .where(WaveHost.wave_id == wave_id, Host.name == name)
        )
        assert wh is not None, f"{name} is not in wave {wave_id}"
        return wh

    @staticmethod
    def wave_index(s: Session, wave_id: int) -> int:
        index = s.scalar(select(Wave.index).where(Wave.id == wave_id))
        assert index is not None, f"wave {wave_id} vanished"
        return index

    def refused_to_retry(self, wave_id: int, max_attempts: int) -> list[int]:
        """Wave hosts whose last try was refused and that have tries left."""
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(WaveHost.id).where(
                        WaveHost.wave_id == wave_id,
                        WaveHost.outcome == Outcome.REFUSED,
                        WaveHost.attempts <= max_attempts,
                    )
                )
            )

    def applied_hosts(self, s: Session) -> set[str]:
        """Hosts this rollout applied the patch to (a failed health check included): what a rollback removes."""
        return set(
            s.scalars(
                select(Host.name)
                .join(WaveHost, WaveHost.host_id == Host.id)
                .where(WaveHost.rollout_id == self.id, WaveHost.outcome.in_([Outcome.APPLIED, Outcome.HEALTH_FAILED]))
            )
        )

    @staticmethod
    def patch_state(s: Session, host_id: int, patch_id: int) -> str | None:
        return s.scalar(select(HostPatch.state).where(HostPatch.host_id == host_id, HostPatch.patch_id == patch_id))

    @staticmethod
    def make_pending(s: Session, wave_host_ids: list[int]) -> None:
        s.execute(
            update(WaveHost)
            .where(WaveHost.id.in_(wave_host_ids))
            .values(status=WaveHostStatus.PENDING, outcome=None)
            .execution_options(synchronize_session=False)
        )

    def mark_rolled_back(self, s: Session, names: list[str]) -> None:
        if not names:
            return
        host_ids = select(Host.id).where(Host.name.in_(names)).scalar_subquery()
        s.execute(
            update(WaveHost)
            .where(WaveHost.rollout_id == self.id, WaveHost.host_id.in_(host_ids))
            .values(status=WaveHostStatus.ROLLED_BACK)
            .execution_options(synchronize_session=False)
        )
