from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default="demo",
    show_default=True,
    help="Where the demo keeps everything it writes.",
)
@click.option("--fresh", is_flag=True, help="Start from scratch: remove the demo directory first.")
@click.option("--hosts", "host_count", default=24, show_default=True, help="Size of the demo fleet.")
def demo(directory: str, fresh: bool, host_count: int) -> None:
    """Run the end-to-end demonstration on a fleet of its own, under --dir."""
    from klpfleet.cli.demo import run_demo

    run_demo(Path(directory), fresh=fresh, host_count=host_count)
