"""What commands share: opening the database named on the command line, and the type of a row id."""

from __future__ import annotations

import click

from klpfleet.db.engine import Database, connect
from klpfleet.db.types import MAX_ROW_ID

# A rollout id as the operator types it: a number no row can have is refused by click in one line (exit 2).
ROLLOUT_ID = click.IntRange(1, MAX_ROW_ID)


def database(ctx: click.Context) -> Database:
    obj = ctx.find_root().obj or {}
    return connect(obj.get("db_url"))
