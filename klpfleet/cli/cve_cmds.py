"""`klpfleet cves`, `klpfleet cve CVE-ID`, `klpfleet cve fixed CVE-ID --kernel-release R`: exposure per CVE.

Exit status (Nagios, like status): 0 no host exposed and none unknown, 1 hosts whose exposure nobody can judge
(no patch for their kernel release), 2 exposed hosts, 3 the database cannot be read.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from klpfleet.cli import completion
from klpfleet.cli.context import database
from klpfleet.cli.host_options import hosts_option
from klpfleet.cli.output import emit, info, output_option, table
from klpfleet.errors import DatabaseError, first_line
from klpfleet.wording import counted


def _read(ctx: click.Context, only: str | None, counts_only: bool = False) -> list[Any]:
    from sqlalchemy.exc import SQLAlchemyError

    from klpfleet.reads.exposure import exposure, exposure_counts

    try:
        with database(ctx).engine.connect() as conn:
            return exposure_counts(conn) if counts_only else exposure(conn, only)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read the database: {first_line(exc)}") from None


def _exit_code(found: list[Any]) -> int:
    from klpfleet.reads.exposure import EXIT

    return max([EXIT[e.verdict()] for e in found] or [0])


@click.command("cves")
@click.option(
    "-o",
    "--output",
    type=click.Choice(("table", "json", "yaml", "openvex", "cyclonedx")),
    default="table",
    show_default=True,
    help="Output format; openvex and cyclonedx write a VEX document for scanners.",
)
@hosts_option("Only these hosts (Ansible host pattern).")
@click.option("--author", help="The VEX document's author (default: who runs klpfleet, or KLPFLEET_ACTOR).")
@click.pass_context
def cves(ctx: click.Context, output: str, pattern: str | None, author: str | None) -> None:
    """Every CVE a registered patch names: hosts covered, exposed (and why) and unknown.

    With -o openvex or -o cyclonedx, a VEX document a scanner reads: per host and CVE, fixed (the livepatch
    running there and since when, or a kernel release that fixes it), affected (why, and what to do), or
    under investigation (no patch for the host's kernel release). Each statement names the host and its kernel
    package as a purl.

    Exit status: 0 nothing exposed (or a VEX document written), 1 hosts nobody can judge (no patch for their
    kernel release), 2 exposed hosts, 3 the database cannot be read.

    \b
    Examples:
      klpfleet cves
      klpfleet cves -o openvex --hosts web-17 > web-17.vex.json    # trivy ... --vex web-17.vex.json
      klpfleet cves -o cyclonedx > fleet.cdx.json
      klpfleet cve CVE-2026-1234 -o json | jq '.data.hosts.exposed[].host'
      klpfleet cve fixed CVE-2026-1234 --kernel-release 6.1.0-57-amd64
    """
    chosen = None
    if pattern:
        from klpfleet.controller.selection import select_hosts

        chosen = set(select_hosts(database(ctx), pattern))
    if output in ("openvex", "cyclonedx"):
        sys.stdout.write(vex_document(ctx, output, chosen, author) + "\n")
        return
    found = _read(ctx, None, counts_only=chosen is None)
    if chosen is not None:
        for e in found:
            e.hosts = {kind: [h for h in hosts if h["host"] in chosen] for kind, hosts in e.hosts.items()}
    emit("cves", [e.summary() for e in found], output, cves_table)
    ctx.exit(_exit_code(found))


def vex_document(ctx: click.Context, fmt: str, hosts: set[str] | None, author: str | None) -> str:
    """The fleet's (or these hosts') VEX document, as text."""
    from datetime import UTC, datetime

    from sqlalchemy.exc import SQLAlchemyError

    from klpfleet.db.events import default_actor
    from klpfleet.reads.vex import vex_text

    try:
        with database(ctx).engine.connect() as conn:
            return vex_text(conn, fmt, hosts, author or default_actor(), datetime.now(UTC))
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read the database: {first_line(exc)}") from None


def cves_table(d: list[dict[str, Any]], out: Any) -> None:
    if not d:
        info("no registered patch names a CVE (patch add --cve CVE-ID)")
        return
    rows = [
        [
            e["cve"],
            ", ".join(sorted({p["name"] + (" (blocked)" if p.get("blocked") else "") for p in e["patches"]})) or "-",
            e["counts"]["covered"],
            e["counts"]["exposed"],
            e["counts"]["unknown"],
            ", ".join(f"{r} {n}" for r, n in e["exposed_by_reason"].items()),
        ]
        for e in d
    ]
    table("exposure per CVE", ["cve", "patches", "covered", "exposed", "unknown", "exposed because"], rows, out)


class CveGroup(click.Group):
    """`cve CVE-ID` shows one CVE; `cve fixed ...` and `cve unfixed ...` are subcommands."""

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        return super().shell_complete(ctx, incomplete) + completion.cves(ctx, None, incomplete)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and args[0] not in self.commands and args[0].upper().startswith("CVE-"):
            return "show", self.commands["show"], args
        return super().resolve_command(ctx, args)


@click.group("cve", cls=CveGroup)
def cve() -> None:
    """One CVE: `klpfleet cve CVE-ID` lists its hosts; `cve fixed` marks a kernel release as fixing it."""


@cve.command("show")
@click.argument("cve_ref", metavar="CVE-ID", shell_complete=completion.cves)
@click.option("--all", "show_all", is_flag=True, help="List covered hosts too (default: exposed and unknown).")
@output_option
@click.pass_context
def show(ctx: click.Context, cve_ref: str, show_all: bool, output: str) -> None:
    """The hosts exposed to CVE-ID (with the reason), unknown, and with --all covered.

    Exit status: 0 nothing exposed, 1 unknown hosts, 2 exposed hosts, 3 the database cannot be read."""
    from klpfleet.reads.exposure import COVERED, EXPOSED, UNKNOWN, cve_id

    found = _read(ctx, cve_id(cve_ref))
    one = found[0]
    data = dict(one.summary(), hosts=one.hosts)

    def render(d: dict[str, Any], out: Any) -> None:
        c = d["counts"]
        out.print(
            f"{d['cve']}: {d['verdict'].upper()}  covered {c['covered']}, exposed {c['exposed']}, "
            f"unknown {c['unknown']}"
        )
        kinds = (EXPOSED, UNKNOWN, COVERED) if show_all else (EXPOSED, UNKNOWN)
        rows = [
            [h["host"], kind, h.get("kernel_release") or "?", h["reason"], h.get("patch") or ""]
            for kind in kinds
            for h in d["hosts"][kind]
        ]
        if rows:
            table(None, ["host", "exposure", "kernel release", "reason", "patch"], rows, out)

    emit("cve", data, output, render)
    ctx.exit(_exit_code(found))


@cve.command("fixed")
@click.argument("cve_ref", metavar="CVE-ID", shell_complete=completion.cves)
@click.option("--kernel-release", "releases", multiple=True, required=True, help="A release that fixes it (repeat).")
@click.pass_context
def fixed(ctx: click.Context, cve_ref: str, releases: tuple[str, ...]) -> None:
    """Mark kernel releases as fixing CVE-ID: hosts booted into them are covered without a patch."""
    _mark(ctx, cve_ref, releases, fixed=True)


@cve.command("unfixed")
@click.argument("cve_ref", metavar="CVE-ID", shell_complete=completion.cves)
@click.option("--kernel-release", "releases", multiple=True, required=True, help="A release marked by mistake.")
@click.pass_context
def unfixed(ctx: click.Context, cve_ref: str, releases: tuple[str, ...]) -> None:
    """Take back `cve fixed` for these kernel releases."""
    _mark(ctx, cve_ref, releases, fixed=False)


def _mark(ctx: click.Context, cve_ref: str, releases: tuple[str, ...], fixed: bool) -> None:
    from klpfleet.reads.exposure import cve_id
    from klpfleet.registry.cve_fixes import mark_fixing

    cve_name = cve_id(cve_ref)
    with database(ctx).session.begin() as s:
        changed = mark_fixing(s, cve_name, releases, fixed)
    verb = "fixing" if fixed else "no longer fixing"
    info(
        f"{cve_name}: {counted(len(changed), 'kernel release')} marked {verb}"
        + (f": {', '.join(changed)}" if changed else "")
    )
