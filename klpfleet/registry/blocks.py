"""Blocking a patch found bad (`klpfleet patch block P --reason TEXT`): while it is blocked no rollout,
reconcile or resume of it starts, and every host drops it from its boot manifest at its next apply or gather.

The first block's who, when and why stand until `patch unblock`; each change is an event naming who did it.
A block row can be edited by whoever reaches the database, so what is read back is bounded here too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from klpfleet.db import events
from klpfleet.db.models import Patch, utcnow
from klpfleet.errors import KlpfleetError, UsageError
from klpfleet.names import MAX_BLOCK_REASON as MAX_REASON


class PatchBlocked(KlpfleetError):
    """Something was asked of a blocked patch that would load it somewhere."""


def checked_reason(reason: str) -> str:
    """The operator's reason: one printable line, not empty, at most MAX_REASON characters."""
    text = reason.strip()
    if not text:
        raise UsageError("--reason is empty: say why the patch is blocked (it is shown wherever the block is)")
    if len(text) > MAX_REASON:
        raise UsageError(f"--reason is {len(text)} characters; at most {MAX_REASON}")
    if not text.isprintable():
        raise UsageError("--reason must be one line of printable text")
    return text


def block(session: Session, patch: Patch, reason: str, actor: str | None = None) -> bool:
    """Block the patch; False when it already was (the first block's who and why stand)."""
    text = checked_reason(reason)
    if patch.blocked_at is not None:
        return False
    patch.blocked_at, patch.blocked_by, patch.blocked_reason = utcnow(), actor or events.default_actor(), text
    events.add(session, "patch.blocked", actor=actor, patch=patch, reason=text)
    return True


def unblock(session: Session, patch: Patch, actor: str | None = None) -> bool:
    """Lift the block; False when the patch was not blocked."""
    if patch.blocked_at is None:
        return False
    was = describe_block(patch)
    patch.blocked_at = patch.blocked_by = patch.blocked_reason = None
    events.add(session, "patch.unblocked", actor=actor, patch=patch, was=was)
    return True


def describe_block(patch: Patch) -> dict[str, Any] | None:
    """The block as records show it (None when not blocked); a forged row is cut to size."""
    if patch.blocked_at is None:
        return None
    return {
        "at": patch.blocked_at.isoformat(),
        "by": (patch.blocked_by or "unknown")[:255],
        "reason": (patch.blocked_reason or "no reason given")[:MAX_REASON],
    }


def block_sentence(patch: Patch) -> str:
    """One line: which patch, blocked when, by whom, why, and how to lift it."""
    found = describe_block(patch) or {}
    return (
        f"patch {patch.name}@{patch.sha256[:12]} is blocked (since {found.get('at', '?')[:16]}Z by "
        f"{found.get('by')}: {found.get('reason')}); `klpfleet patch unblock {patch.name}` lifts it"
    )


def refuse_if_blocked(patch: Patch | None) -> None:
    if patch is not None and patch.blocked_at is not None:
        raise PatchBlocked(block_sentence(patch))
