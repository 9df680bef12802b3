"""Shell completion of names from the database: patches, hosts, rollouts, CVEs, execution nodes.

Click completes commands and options itself (`eval "$(_KLPFLEET_COMPLETE=bash_source klpfleet)"`); these
callbacks add what only the database knows. They read it with plain SQL and never fail a completion: a missing
or unreadable database completes nothing.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

LIMIT = 200  # a shell shows no more than this usefully


def _rows(ctx: click.Context, sql: str, prefix: str) -> list[tuple[Any, ...]]:
    from sqlalchemy import text

    from klpfleet.db.engine import connect

    root = ctx.find_root()
    url = (root.obj or {}).get("db_url") or root.params.get("db_url")
    try:
        db = connect(url)
        with db.engine.connect() as conn:
            return list(conn.execute(text(sql), {"prefix": prefix.replace("%", "") + "%", "limit": LIMIT}))
    except Exception:  # completion must never break the shell: a bad database completes nothing
        return []


def patches(ctx: click.Context, param: click.Parameter | None, incomplete: str) -> list[CompletionItem]:
    rows = _rows(
        ctx,
        "SELECT DISTINCT name, kernel_release FROM patches WHERE name LIKE :prefix ORDER BY name LIMIT :limit",
        incomplete,
    )
    return [CompletionItem(name, help=release) for name, release in rows]


def hosts(ctx: click.Context, param: click.Parameter | None, incomplete: str) -> list[CompletionItem]:
    rows = _rows(
        ctx, "SELECT name, kernel_release FROM hosts WHERE name LIKE :prefix ORDER BY name LIMIT :limit", incomplete
    )
    return [CompletionItem(name, help=release or "") for name, release in rows]


def rollouts(ctx: click.Context, param: click.Parameter | None, incomplete: str) -> list[CompletionItem]:
    rows = _rows(
        ctx,
        "SELECT r.id, p.name, r.status FROM rollouts r JOIN patches p ON p.id = r.patch_id "
        "WHERE CAST(r.id AS TEXT) LIKE :prefix ORDER BY r.id DESC LIMIT :limit",
        incomplete,
    )
    return [CompletionItem(str(rid), help=f"{patch} {status}") for rid, patch, status in rows]


def nodes(ctx: click.Context, param: click.Parameter | None, incomplete: str) -> list[CompletionItem]:
    rows = _rows(
        ctx,
        "SELECT name, ssh_host, serves_label, serves_value FROM execution_nodes WHERE name LIKE :prefix "
        "ORDER BY name LIMIT :limit",
        incomplete,
    )
    return [CompletionItem(name, help=f"{host} {f'{k}={v}' if k else ''}".strip()) for name, host, k, v in rows]


def cves(ctx: click.Context, param: click.Parameter | None, incomplete: str) -> list[CompletionItem]:
    from klpfleet.reads.exposure import cves_of

    names = {c for (raw,) in _rows(ctx, "SELECT cves FROM patches LIMIT :limit", "") for c in cves_of(raw)}
    names |= {
        c for (c,) in _rows(ctx, "SELECT cve FROM cve_fixes WHERE cve LIKE :prefix LIMIT :limit", incomplete.upper())
    }
    return [CompletionItem(c) for c in sorted(names) if c.startswith(incomplete.upper())][:LIMIT]


def _names_from(sql: str) -> Any:
    """A completion of the one column `sql` selects (it filters by :prefix and stops at :limit)."""

    def complete(ctx: click.Context, param: click.Parameter | None, incomplete: str) -> list[CompletionItem]:
        return [CompletionItem(name) for (name,) in _rows(ctx, sql, incomplete)]

    return complete


groups = _names_from("SELECT name FROM groups WHERE name LIKE :prefix ORDER BY name LIMIT :limit")
label_keys = _names_from("SELECT DISTINCT key FROM host_labels WHERE key LIKE :prefix ORDER BY key LIMIT :limit")
# KEY=VALUE pairs, as --label takes them.
labels = _names_from(
    "SELECT DISTINCT key || '=' || value FROM host_labels WHERE key || '=' || value LIKE :prefix "
    "ORDER BY 1 LIMIT :limit"
)


def patch_states(ctx: click.Context, param: click.Parameter | None, incomplete: str) -> list[CompletionItem]:
    from klpfleet.states import PatchState

    return [CompletionItem(s.value) for s in PatchState if s.value.startswith(incomplete)]
