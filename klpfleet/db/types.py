"""Column types shared by the ORM models and the ORM-free status queries."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.types import TypeDecorator

# The largest id a row can have (Integer columns are 32-bit on PostgreSQL): anything larger names nothing, and is
# refused before it reaches a query (SQLite raises OverflowError past 2**63).
MAX_ROW_ID = 2**31 - 1


def json_object(raw: Any) -> dict[str, Any]:
    """A JSON column read through plain SQL (text on SQLite, decoded on PostgreSQL) as a mapping; a row that does
    not decode to one (hand-edited, forged) reads as empty."""
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out; SQLite stores naive text, so reattach UTC on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
