from __future__ import annotations

import click

from klpfleet.cli.context import database
from klpfleet.cli.output import emit, info, output_option, table
from klpfleet.db import events
from klpfleet.inventory.fingerprint import IMPORTED, fingerprint, unchanged_since
from klpfleet.inventory.importer import apply_import
from klpfleet.inventory.sources import DEFAULT_LABEL_KEYS, enable_collection_inventory_plugins, read_inventory


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
@click.option("--reread", is_flag=True, help="Parse the sources even when they are unchanged since the last import.")
@output_option
@click.pass_context
def import_(
    ctx: click.Context, sources: tuple[str, ...], prune: bool, labels: tuple[str, ...], reread: bool, output: str
) -> None:
    """Read hosts, groups, labels and connection vars into the database. Idempotent.

    A re-import of static sources (files, not scripts or plugin configs) that have not changed since the last
    import, into a database whose hosts have not changed either, is answered without parsing them."""
    db = database(ctx)
    label_keys = DEFAULT_LABEL_KEYS + labels
    print_ = None if reread else fingerprint(list(sources), {"labels": label_keys, "prune": prune})
    if print_ is not None:
        with db.session() as session:
            last = unchanged_since(session, print_)
        if last is not None:
            when = f"{last['at']:%Y-%m-%d %H:%M:%S}"
            info(f"sources unchanged since the import at {when}: nothing to do (--reread parses them)")
            counts = {"added": 0, "updated": 0, "unchanged": last["hosts"], "removed": 0}
            report(list(sources), counts, last["hosts"], output, skipped=True)
            return
    enable_collection_inventory_plugins()
    found = read_inventory(list(sources), label_keys)
    with db.session.begin() as session:
        result = apply_import(session, found, prune=prune)
        if print_ is not None:
            events.add(
                session, IMPORTED, fingerprint=print_, sources=list(sources), hosts=len(found), counts=result.counts()
            )
    report(list(sources), result.counts(), len(found), output, skipped=False)


def report(sources: list[str], counts: dict[str, int], hosts: int, output: str, *, skipped: bool) -> None:
    emit(
        "inventory.import",
        {"sources": sources, **counts, "hosts": hosts, "skipped": skipped},
        output,
        lambda d, out: table(
            None,
            ["added", "updated", "unchanged", "removed"],
            [[d["added"], d["updated"], d["unchanged"], d["removed"]]],
            out,
        ),
    )
