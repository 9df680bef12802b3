"""`klpfleet metrics`: the fleet as Prometheus metrics, on stdout or for node_exporter's textfile collector."""

from __future__ import annotations

import sys

import click

from klpfleet.cli.context import database
from klpfleet.errors import DatabaseError, UsageError, first_line


@click.command("metrics")
@click.option(
    "--textfile",
    metavar="PATH.prom",
    help="Write there atomically (node_exporter --collector.textfile.directory) instead of to stdout.",
)
@click.pass_context
def metrics(ctx: click.Context, textfile: str | None) -> None:
    """Prometheus exposition of the fleet: hosts by patch and state, by kernel release, unreachable hosts,
    exposure per CVE, rollouts by status, the current wave's counts, the age of each group's newest observation.

    Exit status: 0 written, 2 bad input, 3 the database cannot be read. Run it from cron or a systemd timer
    with --textfile, e.g. every minute into /var/lib/node_exporter/textfile_collector/klpfleet.prom."""
    from sqlalchemy.exc import SQLAlchemyError

    from klpfleet.reads.metrics import exposition, write_textfile

    if textfile is not None and not textfile.endswith(".prom"):
        raise UsageError(f"{textfile}: node_exporter's textfile collector reads only files ending in .prom")
    db = database(ctx)
    try:
        if textfile is None:
            sys.stdout.buffer.write(exposition(db.engine.connect))
            return
        write_textfile(db.engine.connect, textfile)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read the database: {first_line(exc)}") from None
    except OSError as exc:
        raise UsageError(f"cannot write {textfile}: {exc.strerror or exc}") from None
