"""Kernel releases an operator marked as fixing a CVE (`klpfleet cve fixed/unfixed`): a host booted into one is
covered without a patch. Each change is an event."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from klpfleet.db import events
from klpfleet.db.models import CveFix
from klpfleet.errors import UsageError
from klpfleet.names import valid_kernel_release


def mark_fixing(s: Session, cve: str, releases: tuple[str, ...], fixed: bool) -> list[str]:
    """Mark (or with fixed=False unmark) releases as fixing `cve`; the releases whose mark changed."""
    for release in releases:
        if not valid_kernel_release(release):
            raise UsageError(f"{release!r} is not a kernel release")
    changed = []
    for release in releases:
        row = s.scalar(select(CveFix).where(CveFix.cve == cve, CveFix.kernel_release == release))
        if fixed and row is None:
            s.add(CveFix(cve=cve, kernel_release=release, marked_by=events.default_actor()))
        elif not fixed and row is not None:
            s.execute(delete(CveFix).where(CveFix.cve == cve, CveFix.kernel_release == release))
        else:
            continue
        changed.append(release)
        events.add(s, "cve.fixed" if fixed else "cve.unfixed", cve=cve, kernel_release=release)
    return changed
