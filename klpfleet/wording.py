"""Messages written for people: `1 host`, `3 hosts`, never `1 hosts` or `host(s)`."""

from __future__ import annotations

IRREGULAR = {"batch": "batches", "patch": "patches"}


def counted(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or IRREGULAR.get(noun, noun + 's')}"


def listed(counts: dict[str, int]) -> str:
    """{'added': 24, 'removed': 0} as `24 added, 0 removed`: never a Python dict in a message."""
    return ", ".join(f"{n} {what}" for what, n in counts.items())


def short_list(names: list[str], limit: int = 8) -> str:
    """The first few names, and how many more."""
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit})" if len(names) > limit else "")
