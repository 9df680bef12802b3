from __future__ import annotations

import click

from klpfleet.cli.output import emit, info, output_option, table
from klpfleet.db.engine import (
    SCHEMA_HEAD,
    current_revision,
    is_newer_than_this_klpfleet,
    newer_schema_error,
    open_database,
)


@click.group()
def db() -> None:
    """Create or migrate the inventory database."""


@db.command()
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Create the database if needed and migrate it to this klpfleet's schema."""
    from klpfleet.db.migrate import upgrade as run_upgrade

    database = open_database(ctx.find_root().obj["db_url"], create=True)
    before = current_revision(database)
    if is_newer_than_this_klpfleet(before):
        raise newer_schema_error(database, str(before))
    run_upgrade(database)
    if before == SCHEMA_HEAD:
        info(f"database {database.display_url()} already at schema {SCHEMA_HEAD}")
    else:
        info(f"database {database.display_url()} migrated from {before or 'empty'} to schema {SCHEMA_HEAD}")


@db.command()
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Confirm: a downgrade drops data.")
@click.pass_context
def downgrade(ctx: click.Context, revision: str, yes: bool) -> None:
    """Migrate the database down to REVISION ('base' drops every table)."""
    from klpfleet.db.migrate import downgrade as run_downgrade

    if not yes:
        raise click.UsageError("a downgrade drops data: add --yes to confirm")
    database = open_database(ctx.find_root().obj["db_url"])
    run_downgrade(database, revision)
    info(f"database {database.display_url()} now at {current_revision(database) or 'base'}")


@db.command()
@output_option
@click.pass_context
def current(ctx: click.Context, output: str) -> None:
    """Show the database's schema revision and the one this klpfleet needs."""
    database = open_database(ctx.find_root().obj["db_url"])
    revision = current_revision(database)
    data = {
        "url": database.display_url(),
        "revision": revision,
        "required": SCHEMA_HEAD,
        "up_to_date": revision == SCHEMA_HEAD,
    }
    emit(
        "db.current",
        data,
        output,
        lambda d, out: table(
            None,
            ["url", "revision", "required", "up to date"],
            [[d["url"], d["revision"], d["required"], d["up_to_date"]]],
            out,
        ),
    )
    if revision != SCHEMA_HEAD:
        ctx.exit(1)
