"""Which registered patch a host's report names: by sha256 when it gives one, else by name, the build for the host's
kernel release first."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from klpfleet.db.models import Host, Patch
from klpfleet.hoststate.task_results import SHA256_RE


def find_patch(s: Session, host: Host, name: Any, sha256: Any) -> Patch | None:
    if isinstance(sha256, str) and SHA256_RE.match(sha256):
        found = s.scalar(select(Patch).where(Patch.sha256 == sha256.lower()))
        if found is not None:
            return found
    if not isinstance(name, str) or not name:
        return None
    candidates = list(s.scalars(select(Patch).where(Patch.name == name).order_by(Patch.added_at.desc())))
    for p in candidates:
        if host.kernel_release and p.kernel_release == host.kernel_release:
            return p
    return candidates[0] if candidates else None
