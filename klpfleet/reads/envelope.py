"""The documents klpfleet hands out, for scripts and the dashboard alike: plain JSON types, ISO-8601 UTC times, and
an envelope with a schema version and the kind of record it carries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def envelope(kind: str, data: Any) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "generated_at": iso(datetime.now(UTC)), "data": plain(data)}
