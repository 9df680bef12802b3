from __future__ import annotations

import click

from klpfleet.cli.context import database
from klpfleet.cli.output import emit, output_option, table
from klpfleet.inventory import (
    DEFAULT_LABEL_KEYS,
    apply_import,
    enable_collection_inventory_plugins,
    read_inventory,
)


@click.group()
def inventory() -> None:
    """Import hosts from Ansible inventories."""


@inventory.command("import")
@click.option(
    "-i",
    "--inventory",
    "sources",
    multiple=True,
    required=True,
    metavar="SOURCE",
    help="Any Ansible inventory source (file, directory, plugin config); repeatable.",
)
@click.option("--prune", is_flag=True, help="Remove hosts the sources no longer list.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="VAR",
    help=f"Host var to keep as a label (default: {', '.join(DEFAULT_LABEL_KEYS)} and klp_labels).",
)
@output_option
@click.pass_context
def import_(ctx: click.Context, sources: tuple[str, ...], prune: bool, labels: tuple[str, ...], output: str) -> None:
    """Read hosts, groups, labels and connection vars into the database. Idempotent."""
    db = database(ctx)
    enable_collection_inventory_plugins()
    found = read_inventory(list(sources), DEFAULT_LABEL_KEYS + labels)
    with db.session.begin() as session:
        result = apply_import(session, found, prune=prune)
    counts = result.counts()
    emit(
        "inventory.import",
        {"sources": list(sources), **counts, "hosts": len(found)},
        output,
        lambda d, out: table(
            None,
            ["added", "updated", "unchanged", "removed"],
            [[d["added"], d["updated"], d["unchanged"], d["removed"]]],
            out,
        ),
    )
