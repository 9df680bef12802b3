"""What commands share: opening the database named on the command line."""

from __future__ import annotations

import click

from klpfleet.db.engine import Database, connect


def database(ctx: click.Context) -> Database:
    obj = ctx.find_root().obj or {}
    return connect(obj.get("db_url"))
