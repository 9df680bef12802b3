"""`klpfleet functions`: which patch's code runs for each patched function, per host or across the fleet."""

from __future__ import annotations

from typing import Any

import click

from klpfleet.cli import completion
from klpfleet.cli.context import database
from klpfleet.cli.output import emit, output_option, table


@click.command("functions")
@click.argument("host", required=False, shell_complete=completion.hosts)
@click.option("--function", "function", metavar="NAME", help="Only this function (as the kernel names it).")
@click.option("--stacked", is_flag=True, help="Only functions that more than one loaded patch replaces.")
@output_option
@click.pass_context
def functions(ctx: click.Context, host: str | None, function: str | None, stacked: bool, output: str) -> None:
    """Patched functions -> the patches that replace them, top of the stack (the one in effect) first.

    With HOST, that host's functions; without, every distinct stack across the fleet with how many hosts
    have it. Read from what the hosts' sysfs listed at the last gather or probe (`klpfleet probe` to refresh).

    \b
    Examples:
      klpfleet functions web-1
      klpfleet functions --function cmdline_proc_show
      klpfleet functions --stacked -o json
    """
    from sqlalchemy import select

    from klpfleet.db.models import Host
    from klpfleet.errors import UsageError
    from klpfleet.reads.function_map import fleet_rows, function_rows, host_stacks

    with database(ctx).session() as session:
        if host is not None and session.scalar(select(Host.id).where(Host.name == host)) is None:
            raise UsageError(f"no host {host!r} (see `klpfleet hosts`)")
        rows = function_rows(host_stacks(session, [host] if host else None), function)
    if stacked:
        rows = [r for r in rows if r["stacked"]]
    if host is not None:
        emit("functions.host", rows, output, _host_table)
    else:
        emit("functions.fleet", fleet_rows(rows), output, _fleet_table)


def _host_table(rows: list[dict[str, Any]], out: Any) -> None:
    table(
        None,
        ["object", "function", "sympos", "in effect", "patches (top first)", "order from"],
        [
            [r["object"], r["function"], r["sympos"], r["in_effect"], " > ".join(r["patches"]), r["stack_order_source"]]
            for r in rows
        ],
        out,
    )


def _fleet_table(rows: list[dict[str, Any]], out: Any) -> None:
    table(
        None,
        ["object", "function", "sympos", "in effect", "patches (top first)", "hosts"],
        [[r["object"], r["function"], r["sympos"], r["in_effect"], " > ".join(r["patches"]), r["hosts"]] for r in rows],
        out,
    )
