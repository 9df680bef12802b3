"""Serialising read-then-write transactions that must not interleave (planning, inventory import, patch add).

Two such transactions that both read "no row yet" and then insert would collide on a unique constraint, or
both claim the same host. PostgreSQL: a transaction-level advisory lock per kind of work. SQLite: take the
database's single write lock up front with a write that changes nothing, so the second writer waits (up to
the busy timeout) and then reads what the first one wrote.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

PLAN = 0x6B6C7066
INVENTORY = 0x6B6C7067
PATCHES = 0x6B6C7068


def serialize(session: Session, key: int) -> None:
    """Hold `key` until this session's transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        session.execute(text("UPDATE alembic_version SET version_num = version_num WHERE 0 = 1"))
