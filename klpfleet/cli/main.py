"""Entry point. Subcommands are imported only when invoked, so `klpfleet --help` stays fast."""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import click

from klpfleet import __version__

# name -> (module, attribute, one-line help). The help text lives here so --help imports nothing.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "db": ("klpfleet.cli.db_cmds", "db", "Create or migrate the inventory database."),
    "inventory": ("klpfleet.cli.inventory_cmds", "inventory", "Import hosts from Ansible inventories."),
    "patch": ("klpfleet.cli.patch_cmds", "patch", "Register and inspect livepatch artifacts."),
    "status": ("klpfleet.cli.status_cmds", "status", "The fleet at a glance (exit 0/1/2/3 for monitoring)."),
    "hosts": ("klpfleet.cli.status_cmds", "hosts", "List hosts, filtered by patch state, patch, group or label."),
    "host": ("klpfleet.cli.status_cmds", "host", "One host: per-patch state and recent events."),
    "functions": (
        "klpfleet.cli.functions_cmds",
        "functions",
        "Patched functions and the patches replacing them, the one in effect first.",
    ),
    "events": ("klpfleet.cli.status_cmds", "events_cmd", "The audit trail, newest first."),
    "sim": ("klpfleet.cli.sim_cmds", "sim", "Simulated kernels, hosts and fleets."),
    "rollout": ("klpfleet.cli.rollout_cmds", "rollout", "Plan, run and steer rollouts in waves."),
    "rollback": ("klpfleet.cli.rollback_cmds", "rollback", "Remove a patch from hosts, last wave first, stack-aware."),
    "probe": ("klpfleet.cli.probe_cmds", "probe", "Read live state from every host over SSH (read-only); mark drift."),
    "demo": ("klpfleet.cli.demo_cmds", "demo", "Run the end-to-end demonstration on a fleet of its own."),
    "lab": ("klpfleet.cli.lab_cmds", "lab", "Real-kernel lab: Debian's kernel in QEMU VMs, over SSH."),
    "cves": ("klpfleet.cli.cve_cmds", "cves", "Exposure per CVE: hosts covered, exposed (and why), unknown."),
    "cve": ("klpfleet.cli.cve_cmds", "cve", "One CVE's hosts; `cve fixed` marks kernel releases that fix it."),
    "dashboard": ("klpfleet.cli.dashboard_cmds", "dashboard", "A live web view of the fleet and its rollouts."),
    "metrics": ("klpfleet.cli.metrics_cmds", "metrics", "Prometheus metrics of the fleet (stdout or --textfile)."),
    "node": ("klpfleet.cli.node_cmds", "node", "Execution nodes that run the waves' Ansible near the hosts."),
    "reconcile": ("klpfleet.cli.reconcile_cmds", "reconcile", "Plan rollouts that put back what drifted or was lost."),
    "playbooks": (
        "klpfleet.cli.playbooks_cmds",
        "playbooks",
        "Where the playbooks and the collection are, to run by hand.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            import difflib

            close = difflib.get_close_matches(name, list(COMMANDS), n=2, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else " (see `klpfleet --help`)"
            raise click.UsageError(f"no command {name!r}{hint}", ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "db_url",
    envvar="KLPFLEET_DB",
    metavar="URL",
    help="Database URL or SQLite path (env KLPFLEET_DB; default: SQLite under the XDG data dir).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(__version__, prog_name="klpfleet")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, debug: bool) -> None:
    """Roll kernel livepatches across a fleet of Linux servers."""
    ctx.obj = {"db_url": db_url, "debug": debug}


def say(line: str) -> None:
    """An error line on stderr; whatever it quotes from hosts or files, with control characters escaped."""
    from klpfleet.cli.output import printable

    click.echo(printable(line), err=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if not debug:
        # A library's deprecation notice (cryptography's about DSA when ansible-core imports its SSH agent code) is
        # not the operator's business and would break "one line on stderr"; --debug shows them.
        warnings.filterwarnings("ignore", module=r"(ansible|cryptography|paramiko|fabric|invoke)(\.|$)")
    try:
        rc = cli.main(args=args, prog_name="klpfleet", standalone_mode=False)
    except click.exceptions.Exit as exc:
        rc = exc.exit_code
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "klpfleet"
        say(f"klpfleet: error: {exc.format_message()} (see '{where} --help')")
        rc = exc.exit_code
    except click.ClickException as exc:
        say(f"klpfleet: error: {exc.format_message()}")
        rc = exc.exit_code
    except click.exceptions.Abort:
        say("klpfleet: aborted")
        rc = 130
    except KeyboardInterrupt:
        say("klpfleet: interrupted")
        rc = 130
    except BaseException as exc:
        if debug or isinstance(exc, SystemExit):
            raise
        rc = report(exc)
    sys.exit(rc if isinstance(rc, int) else 0)


def report(exc: BaseException) -> int:
    from klpfleet.errors import KlpfleetError, first_line

    if isinstance(exc, KlpfleetError):
        say(f"klpfleet: error: {exc}")
        return exc.exit_code
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # pragma: no cover
        SQLAlchemyError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, SQLAlchemyError):
        # Unreachable, locked, damaged (a corrupt page), or data the database refused: all exit 3.
        say(f"klpfleet: database error: {first_line(exc)}")
        return 3
    if isinstance(exc, (ValueError, TypeError)) and _raised_reading_a_row(exc):
        # A JSON column or a timestamp that does not decode: a row someone edited by hand, or damage.
        say(
            f"klpfleet: database error: a row holds a value klpfleet cannot read (edited or damaged): {first_line(exc)}"
        )
        return 3
    if isinstance(exc, OSError):
        say(f"klpfleet: error: {exc}")
        return 1
    say(f"klpfleet: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
    return 70


def _raised_reading_a_row(exc: BaseException) -> bool:
    """Whether SQLAlchemy's result processing raised it (decoding a stored value), not klpfleet's own code."""
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}sqlalchemy{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


if __name__ == "__main__":
    main()
