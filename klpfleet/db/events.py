"""Writing the append-only event log. Every state change goes through record()."""

from __future__ import annotations

import getpass
import os
import socket
from functools import cache
from typing import Any

from sqlalchemy.orm import Session

from klpfleet.db.models import Event, Host, Patch, Rollout


@cache
def default_actor() -> str:
    """Who is acting: KLPFLEET_ACTOR when set (AWX, cron), else user@machine."""
    explicit = os.environ.get("KLPFLEET_ACTOR")
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def add(
    session: Session,
    kind: str,
    *,
    actor: str | None = None,
    host: Host | None = None,
    patch: Patch | None = None,
    rollout: Rollout | None = None,
    patch_name: str | None = None,
    **details: Any,
) -> Event:
    """Append an event. `patch_name` names a patch that is not registered (no row to point at)."""
    event = Event(
        actor=actor or default_actor(),
        kind=kind,
        host_id=host.id if host is not None else None,
        host_name=host.name if host is not None else None,
        patch_id=patch.id if patch is not None else None,
        patch_name=patch.name if patch is not None else patch_name,
        rollout_id=rollout.id if rollout is not None else None,
        details=details,
    )
    session.add(event)
    return event
