"""`klpfleet patch block`: the block and the pause of the patch's rollouts in one transaction, and the wait for
their drivers to stop before a fleet-wide rollback takes the patch off."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from klpfleet.controller.control import apply_request, driver_alive
from klpfleet.db.engine import Database
from klpfleet.db.models import Rollout
from klpfleet.errors import KlpfleetError
from klpfleet.registry.blocks import block, block_sentence, describe_block, unblock
from klpfleet.registry.patches import get_patch
from klpfleet.states import Request, RolloutStatus

DRIVER_STOP_WAIT = 15 * 60.0  # seconds: a driver stops once its hosts in flight finish their transition


@dataclass
class Blocked:
    name: str
    sha256: str
    newly: bool  # False: it was already blocked, and that block's words stand
    sentence: str
    block: dict[str, Any] | None  # when, by whom, why (registry.blocks.describe_block)
    paused: list[int] = field(default_factory=list)  # rollouts this block paused
    running: list[int] = field(default_factory=list)  # of those, the ones a driver was driving


def block_patch(db: Database, ref: str, reason: str, actor: str | None = None) -> Blocked:
    """Block the patch and pause its planned and running rollouts (a running driver stops at its next safe
    point: the hosts in flight finish their transition, no host is left half-patched)."""
    with db.session.begin() as s:
        patch = get_patch(s, ref)
        newly = block(s, patch, reason, actor)
        sentence = block_sentence(patch)
        done = Blocked(patch.name, patch.sha256, newly, sentence, describe_block(patch))
        active = s.scalars(
            select(Rollout)
            .where(Rollout.patch_id == patch.id, Rollout.status.in_([RolloutStatus.PLANNED, RolloutStatus.RUNNING]))
            .order_by(Rollout.id)
        )
        for rollout in active:
            was_running = rollout.status == RolloutStatus.RUNNING
            apply_request(s, rollout, Request.PAUSE, reason=sentence, actor=actor)
            done.paused.append(rollout.id)
            if was_running:
                done.running.append(rollout.id)
    return done


def unblock_patch(db: Database, ref: str, actor: str | None = None) -> tuple[str, bool]:
    """Lift the block: (the patch's name, whether it was blocked). Its paused rollouts stay paused: resuming one
    is an operator's choice."""
    with db.session.begin() as s:
        patch = get_patch(s, ref)
        return patch.name, unblock(s, patch, actor)


def wait_for_drivers(
    db: Database,
    rollout_ids: list[int],
    timeout: float = DRIVER_STOP_WAIT,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Until no driver drives these rollouts; bounded, so that a rollback never races a driver's loads."""
    end = time.monotonic() + timeout
    while alive := [i for i in rollout_ids if driver_alive(db, i)]:
        if time.monotonic() >= end:
            listing = ", ".join(str(i) for i in alive)
            raise KlpfleetError(
                f"the patch is blocked, but rollout {listing} still has a live driver after {timeout:.0f} s; "
                "nothing was rolled back: run `klpfleet rollback` once `klpfleet rollout list` shows it paused"
            )
        sleep(1.0)
