from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import click

from klpfleet.cli import completion
from klpfleet.cli.context import ROLLOUT_ID, database
from klpfleet.cli.output import cell, console, emit, info, output_option, printable, table

# Exit codes of `rollout start/resume --wait` and `rollout status`: 0 completed; 1 paused, aborted or rolled
# back; 2 the controller failed; 3 (status without --watch) not finished yet.
EXIT = {"completed": 0, "paused": 1, "aborted": 1, "rolled_back": 1, "failed": 2}
NOT_FINISHED = 3


engine_option = click.option(
    "--engine",
    type=click.Choice(["auto", "mitogen", "ansible"]),
    default="auto",
    show_default=True,
    help="What runs the playbooks: Mitogen's strategy (pip install 'klpfleet[fast]'), Ansible's own, or "
    "(auto) Mitogen where it is installed, with Ansible's own as the fallback.",
)


@click.group()
def rollout() -> None:
    """Plan, run and steer rollouts: waves, gates, pause, promote, abort."""


def rollout_policy_options(command: Any) -> Any:
    """The options that make a rollout's policy (waves, budgets, gates, transition handling); `rollout create` and
    `reconcile` share them."""
    for option in reversed(
        [
            click.option(
                "--waves", default="1,10%,50%,100%", show_default=True, help="Wave sizes as Ansible's serial list."
            ),
            click.option("--by", metavar="LABEL", help="Keep each wave inside one failure domain (e.g. zone)."),
            click.option("--max-failed", metavar="N|P%", help="Hard failures a wave may have (default 0)."),
            click.option(
                "--max-refused", metavar="N|P%", help="Callback refusals a wave may have (default: no limit)."
            ),
            click.option("--bake", metavar="DURATION", help="Wait between waves (e.g. 10m)."),
            click.option(
                "--health-check", metavar="CMD", help="Command run on each host after it is patched (no shell)."
            ),
            click.option("--on-failure", type=click.Choice(["pause", "rollback"]), default="pause", show_default=True),
            click.option(
                "--on-refusal", type=click.Choice(["pause", "continue"]), default="continue", show_default=True
            ),
            click.option("--retry-refused", default=0, show_default=True, help="Retries of refused hosts."),
            click.option("--retry-delay", metavar="DURATION", help="Delay before retrying refusals (default 60s)."),
            click.option("--forks", default=20, show_default=True, help="Parallel hosts within a wave."),
            click.option("--transition-timeout", metavar="DURATION", help="Per host (default 60s)."),
            click.option(
                "--on-stall", type=click.Choice(["reverse", "wait", "force"]), default="reverse", show_default=True
            ),
            click.option(
                "--allow-force",
                is_flag=True,
                help="Needed with --on-stall force (a forced patch needs a reboot to go).",
            ),
        ]
    ):
        command = option(command)
    return command


@rollout.command()
@click.argument("patch_ref", metavar="PATCH", shell_complete=completion.patches)
@click.option("--hosts", "pattern", metavar="PATTERN", help="Ansible host pattern (globs, ':' unions, '!', '&').")
@click.option("--group", help="Only hosts of this inventory group (or label group such as zone_a).")
@rollout_policy_options
@engine_option
@output_option
@click.pass_context
def create(
    ctx: click.Context, patch_ref: str, pattern: str | None, group: str | None, output: str, **options: Any
) -> None:
    """Plan a rollout of PATCH and print the waves; touches no host.

    \b
    Examples:
      klpfleet rollout create livepatch_cve_2026_1234 --waves 1,10%,50%,100% --by zone
      klpfleet rollout create livepatch_cve_2026_1234 --group web --max-failed 1 --max-refused 5% \\
          --bake 30m --health-check 'systemctl is-system-running' --on-failure rollback
      klpfleet rollout create livepatch_cve_2026_1234 --hosts 'zone_b:!web-17' -o json
    """
    from klpfleet.controller.plan import create_rollout, make_plan, plan_record
    from klpfleet.controller.policy import build_policy
    from klpfleet.controller.selection import select_hosts
    from klpfleet.registry.patches import get_patch

    policy = build_policy(**options)
    db = database(ctx)
    names = select_hosts(db, pattern, group)
    with db.session.begin() as s:
        patch = get_patch(s, patch_ref)
        plan = make_plan(s, patch, names, policy)
        selector = " & ".join(x for x in (f"group {group}" if group else None, pattern) if x) or "all"
        rollout_row = create_rollout(s, patch, plan, policy, selector)
        record = {
            "id": rollout_row.id,
            "patch": patch.name,
            "sha256": patch.sha256,
            **plan_record(plan),
            "policy": policy.to_json(),
        }
    info(
        f"planned rollout {record['id']}: {sum(len(w['hosts']) for w in record['waves'])} hosts in "
        f"{len(record['waves'])} waves; start it with `klpfleet rollout start {record['id']} --wait`"
    )
    emit("rollout.plan", record, output, _plan_table)


def _plan_table(d: dict[str, Any], out: Any) -> None:
    table(
        f"rollout {d['id']}: {d['patch']} {d['sha256'][:12]}",
        ["wave", "domain", "hosts", "names"],
        [[w["index"] + 1, w["domain"], len(w["hosts"]), _names(w["hosts"])] for w in d["waves"]],
        out,
    )
    if d["excluded"]:
        table(
            f"excluded ({len(d['excluded'])})",
            ["host", "reason"],
            [[e["host"], e["reason"]] for e in d["excluded"]],
            out,
        )


def _names(hosts: list[str], limit: int = 8) -> str:
    return ", ".join(hosts[:limit]) + (f" (+{len(hosts) - limit})" if len(hosts) > limit else "")


def drive_or_detach(ctx: click.Context, rollout_id: int, wait: bool) -> None:
    if not wait:
        from klpfleet.controller.control import spawn_driver

        log = spawn_driver(database(ctx), rollout_id)
        info(
            f"rollout {rollout_id} is being driven in the background (log: {log}); "
            f"watch it with `klpfleet rollout status {rollout_id} --watch`"
        )
        return
    ctx.exit(drive(ctx, rollout_id))


def drive(ctx: click.Context, rollout_id: int) -> int:
    from klpfleet.controller.driver import Driver
    from klpfleet.errors import KlpfleetError

    db = database(ctx)
    live = LiveRollout(db, rollout_id) if sys.stderr.isatty() and not os.environ.get("KLPFLEET_NO_LIVE") else None
    progress = CliProgress(rollout_id)
    try:
        with live or contextlib.nullcontext():
            final = Driver(db, rollout_id, progress=progress).drive()
    except KlpfleetError as exc:
        click.echo(f"klpfleet: error: {exc}", err=True)
        return 2
    except Exception as exc:
        if ctx.find_root().obj.get("debug"):
            raise
        click.echo(
            f"klpfleet: controller error: {type(exc).__name__}: {exc} (resume with `klpfleet rollout resume "
            f"{rollout_id}`)",
            err=True,
        )
        return 2
    progress.line(f"rollout {rollout_id}: {final}", "finished", status=final)
    return EXIT.get(final, 2)


class CliProgress:
    """Progress lines on stderr: plain text readable in a terminal, a log file and CI alike, or with
    KLPFLEET_LOG_FORMAT=json one JSON object per line (at, rollout, elapsed, kind, message and the figures), for a
    log shipper. The background driver's log (driver.log) is written the same way."""

    def __init__(self, rollout_id: int | None = None) -> None:
        self.start = time.monotonic()
        self.rollout_id = rollout_id
        self.json = os.environ.get("KLPFLEET_LOG_FORMAT", "text").lower() == "json"

    def line(self, text: str, kind: str = "note", **fields: Any) -> None:
        elapsed = time.monotonic() - self.start
        if not self.json:
            info(f"[{elapsed:7.1f}s] {text}")
            return
        import json
        from datetime import UTC, datetime

        from klpfleet.cli.output import iso, plain

        record = {"at": iso(datetime.now(UTC)), "rollout": self.rollout_id, "elapsed": round(elapsed, 3), "kind": kind}
        click.echo(json.dumps(plain({**record, "message": text, **fields}), separators=(",", ":")), err=True)

    def wave(self, index: int, total: int, domain: str | None, hosts: int) -> None:
        self.line(
            f"wave {index + 1}/{total}{f' ({domain})' if domain else ''}: {hosts} host(s)",
            "wave",
            wave=index + 1,
            waves=total,
            domain=domain,
            hosts=hosts,
        )

    def counts(self, index: int, counts: Any) -> None:
        c = counts.as_dict()
        self.line(
            f"wave {index + 1}: applied {c['applied']}, refused {c['refused']}, failed {c['failed']}"
            + (f", pending {c['pending']}" if c["pending"] else ""),
            "counts",
            wave=index + 1,
            counts=c,
        )

    def note(self, text: str) -> None:
        self.line(text)


@rollout.command(hidden=True)
@click.argument("rollout_id", type=ROLLOUT_ID, shell_complete=completion.rollouts)
@click.pass_context
def drive_cmd(ctx: click.Context, rollout_id: int) -> None:
    ctx.exit(drive(ctx, rollout_id))


rollout.add_command(drive_cmd, "drive")


@rollout.command()
@click.argument("rollout_id", type=ROLLOUT_ID, shell_complete=completion.rollouts)
@click.option("--wait", is_flag=True, help="Drive it here and exit 0 completed, 1 paused/aborted, 2 error.")
@click.pass_context
def start(ctx: click.Context, rollout_id: int, wait: bool) -> None:
    """Start a planned rollout: in the background (its log under the runs directory), or here with --wait.

    \b
    Examples:
      klpfleet rollout start 7 --wait      # a live view on a terminal; exit 0 completed, 1 paused/aborted
      klpfleet rollout start 7 && klpfleet rollout status 7 --watch
    """
    from klpfleet.errors import UsageError
    from klpfleet.reads.rollouts import get_rollout

    with database(ctx).session() as s:
        status = get_rollout(s, rollout_id).status
    if status != "planned":
        raise UsageError(f"rollout {rollout_id} is {status}, not planned (use `klpfleet rollout resume`)")
    drive_or_detach(ctx, rollout_id, wait)


@rollout.command()
@click.argument("rollout_id", type=ROLLOUT_ID, shell_complete=completion.rollouts)
@click.option("--wait", is_flag=True, help="Drive it here and exit 0 completed, 1 paused/aborted, 2 error.")
@click.pass_context
def resume(ctx: click.Context, rollout_id: int, wait: bool) -> None:
    """Continue a paused rollout, or one whose controller died (even before it started)."""
    from klpfleet.controller.control import driver_alive, request
    from klpfleet.errors import UsageError
    from klpfleet.reads.rollouts import get_rollout
    from klpfleet.states import Request, RolloutStatus

    db = database(ctx)
    with db.session() as s:
        status = get_rollout(s, rollout_id).status
    if status == RolloutStatus.PAUSED:
        request(db, rollout_id, Request.RESUME)
    elif status == RolloutStatus.PLANNED:
        pass  # a start that died before its first step: resuming starts it
    elif status in (RolloutStatus.RUNNING, RolloutStatus.ABORTING):
        if driver_alive(db, rollout_id):
            raise UsageError(f"rollout {rollout_id} already has a live driver")
    else:
        raise UsageError(f"rollout {rollout_id} is {status}; only planned, paused or orphaned rollouts resume")
    drive_or_detach(ctx, rollout_id, wait)


@rollout.command()
@click.argument("rollout_id", type=ROLLOUT_ID, shell_complete=completion.rollouts)
@click.option("--reason", default="paused by an operator", show_default=True)
@click.pass_context
def pause(ctx: click.Context, rollout_id: int, reason: str) -> None:
    """Stop at the next safe point (the hosts in flight finish their transition)."""
    from klpfleet.controller.control import request
    from klpfleet.states import Request

    request(database(ctx), rollout_id, Request.PAUSE, reason=reason)
    info(f"rollout {rollout_id}: pause requested")


@rollout.command()
@click.argument("rollout_id", type=ROLLOUT_ID, shell_complete=completion.rollouts)
@click.option("--full", is_flag=True, help="Run all remaining waves without bakes or pauses.")
@click.option("--wait", is_flag=True, help="Drive it here and exit 0 completed, 1 paused/aborted, 2 error.")
@click.pass_context
def promote(ctx: click.Context, rollout_id: int, full: bool, wait: bool) -> None:
    """Go past a pause (the blocked wave's gate counts as passed), or skip the current bake."""
    from klpfleet.controller.control import driver_alive, request
    from klpfleet.states import Request

    db = database(ctx)
    request(db, rollout_id, Request.PROMOTE, reason="promoted", full=full)
    info(f"rollout {rollout_id}: promoted")
    if driver_alive(db, rollout_id):
        return  # its driver sees the override at its next safe point
    drive_or_detach(ctx, rollout_id, wait)


@rollout.command()
@click.argument("rollout_id", type=ROLLOUT_ID, shell_complete=completion.rollouts)
@click.option("--wait", is_flag=True, help="Roll back here when no driver is running.")
@click.pass_context
def abort(ctx: click.Context, rollout_id: int, wait: bool) -> None:
    """Stop and roll back what this rollout applied, last wave first."""
    from klpfleet.controller.control import driver_alive, request
    from klpfleet.states import Request

    db = database(ctx)
    request(db, rollout_id, Request.ABORT, reason="aborted by an operator")
    if driver_alive(db, rollout_id):
        info(f"rollout {rollout_id}: abort requested; its driver rolls back at the next safe point")
        return
    drive_or_detach(ctx, rollout_id, wait)


@rollout.command("list")
@output_option
@click.pass_context
def list_(ctx: click.Context, output: str) -> None:
    """Every rollout, newest first."""
    from klpfleet.reads.rollouts import rollout_list

    with database(ctx).session() as s:
        rows = rollout_list(s)
    emit(
        "rollout.list",
        rows,
        output,
        lambda rows, out: table(
            None,
            ["id", "patch", "status", "hosts", "wave", "created", "by", "reason"],
            [
                [
                    r["id"],
                    r["patch"],
                    r["status"],
                    r["hosts"],
                    f"{(r['current_wave'] or 0) + 1}/{r['waves']}",
                    r["created_at"],
                    r["created_by"],
                    r["pause_reason"],
                ]
                for r in rows
            ],
            out,
        ),
    )


@rollout.command()
@click.argument("rollout_id", type=ROLLOUT_ID, shell_complete=completion.rollouts)
@click.option("--watch", is_flag=True, help="Follow it until it ends or pauses (with -o json: one line per change).")
@click.option("--interval", default=2.0, show_default=True)
@output_option
@click.pass_context
def status(ctx: click.Context, rollout_id: int, watch: bool, interval: float, output: str) -> None:
    """One rollout: waves, outcomes, gates and decisions.

    Exit status: 0 completed, 1 paused, aborted or rolled back, 2 the controller failed, 3 still running
    (without --watch).
    """
    from klpfleet.reads.rollouts import rollout_record

    db = database(ctx)
    if not watch:
        with db.session() as s:
            data = rollout_record(s, rollout_id)
        emit("rollout", data, output, _status_table)
        ctx.exit(EXIT.get(data["status"], NOT_FINISHED))
    if output != "table":
        ctx.exit(_follow(db, rollout_id, interval, output))
    from rich.live import Live

    out = console()
    with Live(console=out, auto_refresh=False, transient=False) as live:
        while True:
            with db.session() as s:
                data = rollout_record(s, rollout_id, event_limit=8)
            live.update(_renderable(data), refresh=True)
            if data["status"] in EXIT or data["status"] == "paused":
                break
            time.sleep(interval)
    ctx.exit(EXIT.get(data["status"], 1))


def _follow(db: Any, rollout_id: int, interval: float, output: str) -> int:
    """--watch for scripts: the rollout's record each time it changes, one document per line."""
    import json

    from klpfleet.cli.output import envelope
    from klpfleet.reads.rollouts import rollout_record

    last = None
    while True:
        with db.session() as s:
            data = rollout_record(s, rollout_id, event_limit=8)
        doc = envelope("rollout", data)
        shown = json.dumps(doc["data"], sort_keys=True, default=str)
        if shown != last:
            if output == "json":
                sys.stdout.write(json.dumps(doc, separators=(",", ":"), default=str) + "\n")
            else:
                import yaml

                sys.stdout.write("---\n" + yaml.safe_dump(doc, sort_keys=False))
            sys.stdout.flush()
            last = shown
        if data["status"] in EXIT:
            return EXIT[data["status"]]
        time.sleep(interval)


def _status_lines(d: dict[str, Any]) -> list[list[Any]]:
    return [[w["index"] + 1, w["domain"], w["status"], len(w["hosts"]), w["outcomes"]] for w in d["waves"]]


DECISIONS = ("gate.evaluated", "rollout.paused", "rollout.promoted", "rollout.completed", "rollout.aborted")


def _renderable(d: dict[str, Any]) -> Any:
    """The live view: the rollout's progress, one bar per wave with its counts per outcome, the hosts in flight,
    the last decision and the latest events."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    total = sum(len(w["hosts"]) for w in d["waves"])
    done = sum(1 for w in d["waves"] for h in w["hosts"] if h["status"] in ("done", "rolled_back"))
    header = Text(f"rollout {d['id']} {d['patch']}  {d['status'].upper()}  {done}/{total} hosts  ({d['driver']})")
    lines: list[Any] = [header, ProgressBar(total=max(total, 1), completed=done, width=60)]
    if d["pause_reason"]:
        lines.append(Text(f"paused: {d['pause_reason']}"))
    waves = Table("wave", "domain", "status", "progress", "hosts", "outcomes", box=None)
    for w in d["waves"]:
        finished = sum(1 for h in w["hosts"] if h["status"] in ("done", "rolled_back"))
        bar = ProgressBar(total=max(len(w["hosts"]), 1), completed=finished, width=20)
        outcomes = ", ".join(f"{k} {v}" for k, v in w["outcomes"].items())
        waves.add_row(
            str(w["index"] + 1), w["domain"] or "", w["status"], bar, f"{finished}/{len(w['hosts'])}", outcomes
        )
    lines.append(waves)
    flying = [h["host"] for w in d["waves"] for h in w["hosts"] if h["status"] == "running"]
    if flying:
        lines.append(Text(f"in flight ({len(flying)}): {_names(flying)}"))
    decision = next((e for e in d["events"] if e["kind"] in DECISIONS), None)
    if decision is not None:
        details = decision["details"] or {}
        said = details.get("reason") or details.get("verdict") or ""
        lines.append(Text(f"last decision: {decision['kind']} {said}".rstrip()))
    recent = Table("at", "event", "details", box=None)
    for e in d["events"][:6]:
        recent.add_row(cell(e["at"]), e["kind"], cell(e["details"])[:120])
    lines.append(recent)
    return Group(*lines)


class LiveRollout:
    """`rollout start --wait` on a terminal: the live view redrawn from the database while the driver runs in the
    foreground; the driver's own lines scroll above it. Piped or redirected output gets the lines only."""

    def __init__(self, db: Any, rollout_id: int, interval: float = 0.5) -> None:
        import threading

        self.db, self.rollout_id, self.interval = db, rollout_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="klpfleet-live", daemon=True)

    def __enter__(self) -> LiveRollout:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        from rich.live import Live

        from klpfleet.reads.rollouts import rollout_record

        out = console(stderr=True)
        with Live(console=out, auto_refresh=False, redirect_stderr=True, transient=False) as live:
            finished = False
            while not finished:
                finished = self.stop.is_set()  # one last frame once the driver returned: the final state
                # A busy database skips a frame, never the rollout.
                with contextlib.suppress(Exception), self.db.session() as s:
                    live.update(_renderable(rollout_record(s, self.rollout_id, event_limit=8)), refresh=True)
                self.stop.wait(self.interval)


def _status_table(d: dict[str, Any], out: Any) -> None:
    out.print(
        printable(f"rollout {d['id']}: {d['patch']} {d['sha256'][:12]}  status {d['status']}  ({d['driver']})"),
        markup=False,
    )
    if d["pause_reason"]:
        out.print(printable(f"reason: {d['pause_reason']}"), markup=False)
    table("waves", ["wave", "domain", "status", "hosts", "outcomes"], _status_lines(d), out)
    problems = [
        [w["index"] + 1, h["host"], h["outcome"] or h["status"], h["error_code"], h["attempts"]]
        for w in d["waves"]
        for h in w["hosts"]
        if h["outcome"] not in (None, "applied")
    ]
    if problems:
        table("hosts needing attention", ["wave", "host", "outcome", "error", "attempts"], problems, out)
    table(
        "decisions",
        ["at", "actor", "event", "details"],
        [[e["at"], e["actor"], e["kind"], e["details"]] for e in d["events"]],
        out,
    )


@click.command("rollback")
@click.argument("patch_ref", metavar="PATCH", shell_complete=completion.patches)
@click.option("--hosts", "pattern", metavar="PATTERN", help="Only these hosts (Ansible host pattern).")
@click.option("--cascade", is_flag=True, help="Remove patches stacked on top first, newest first.")
@click.option("--fast", is_flag=True, help="Skip bake times and health checks.")
@click.option("--bake", metavar="DURATION", help="Wait between batches (default: none).")
@click.option("--health-check", metavar="CMD", help="Command run on each host after the removal (no shell).")
@click.option("--forks", default=20, show_default=True)
@click.option(
    "--to",
    "previous_ref",
    metavar="PATCH",
    help="For a cumulative (replace) PATCH: load this patch (the one it replaced) in its place first.",
)
@click.option(
    "--allow-unpatched",
    is_flag=True,
    help="Remove a cumulative PATCH although that leaves the hosts with no livepatch at all.",
)
@engine_option
@output_option
@click.pass_context
def rollback(
    ctx: click.Context,
    patch_ref: str,
    pattern: str | None,
    cascade: bool,
    fast: bool,
    bake: str | None,
    health_check: str | None,
    forks: int,
    previous_ref: str | None,
    allow_unpatched: bool,
    engine: str,
    output: str,
) -> None:
    """Remove PATCH from hosts, last wave first, stack-aware.

    \b
    Examples:
      klpfleet rollback livepatch_cve_2026_5678
      klpfleet rollback livepatch_cve_2026_1234 --cascade --hosts 'zone_b' --fast
      klpfleet rollback livepatch_cumulative_v2 --to livepatch_cumulative_v1

    A cumulative (replace) patch freed the patches it replaced: removing it leaves no livepatch at all. Such a
    rollback is refused unless --to names the patch to load in its place (the database suggests the one it
    replaced) or --allow-unpatched says that is the intent."""
    import shlex

    from sqlalchemy import select

    from klpfleet.controller.policy import parse_duration
    from klpfleet.controller.rollback import (
        REMOVED,
        batch_order,
        is_cumulative,
        replaced_patches,
        restore_batches,
        rollback_batches,
    )
    from klpfleet.controller.selection import select_hosts
    from klpfleet.db import events
    from klpfleet.db.models import Host, HostPatch
    from klpfleet.errors import UsageError
    from klpfleet.registry.patches import get_patch
    from klpfleet.runs.engine import resolve as resolve_engine
    from klpfleet.runs.types import runs_dir
    from klpfleet.states import PatchState

    db = database(ctx)
    chosen = set(select_hosts(db, pattern)) if pattern else None
    with db.session() as s:
        patch = get_patch(s, patch_ref)
        on = set(
            s.scalars(
                select(Host.name)
                .join(HostPatch, HostPatch.host_id == Host.id)
                .where(
                    HostPatch.patch_id == patch.id,
                    HostPatch.state.in_(
                        [
                            PatchState.APPLIED.value,
                            PatchState.FORCED.value,
                            PatchState.TRANSITIONING.value,
                            PatchState.STALLED.value,
                            PatchState.DRIFT.value,
                        ]
                    ),
                )
            )
        )
        targets = on if chosen is None else on & chosen
        if not targets:
            raise UsageError(f"{patch.name} is not recorded as applied on any selected host (gather first?)")
        ordered = batch_order(s, patch.id, targets)
        patch_name = patch.name
        replaced = replaced_patches(s, patch, targets)
        previous = get_patch(s, previous_ref) if previous_ref else None
        if previous is not None:
            if previous.kernel_release != patch.kernel_release or previous.id == patch.id:
                raise UsageError(f"--to {previous_ref}: not another patch for kernel {patch.kernel_release}")
            s.expunge(previous)
        elif is_cumulative(s, patch, replaced) and not allow_unpatched:
            hint = sorted(set(replaced.values()))
            instead = (
                f"It replaced {', '.join(hint)}: klpfleet rollback {patch_name} --to {hint[0]} (or --allow-unpatched)"
                if hint
                else "Use --allow-unpatched"
            )
            raise UsageError(
                f"{patch_name} is a cumulative (replace) patch: removing it leaves "
                f"{len(targets)} host(s) with no livepatch at all. {instead}"
            )
    argv = None if fast or not health_check else shlex.split(health_check)
    bake_seconds = 0.0 if fast or not bake else parse_duration(bake, "--bake")
    progress = CliProgress()
    progress.note(f"rolling back {patch_name} from {len(targets)} host(s) in {len(ordered)} batch(es)")

    def report(n: int, answers: list[Any]) -> None:
        progress.note(f"batch {n + 1}: " + ", ".join(f"{x.host} {x.result}" for x in answers)[:300])

    runs_with = resolve_engine(engine)
    if previous is not None:
        progress.note(f"loading {previous.name} in its place first")
        answers = restore_batches(
            db,
            patch_name,
            previous,
            ordered,
            runs_in=runs_dir(db) / f"rollback-{patch_name}",
            ident=f"rollback-{patch_name}-to-{previous.name}",
            forks=forks,
            on_batch=report,
            engine=runs_with,
        )
    else:
        answers = rollback_batches(
            db,
            patch_name,
            ordered,
            runs_in=runs_dir(db) / f"rollback-{patch_name}",
            ident=f"rollback-{patch_name}",
            forks=forks,
            cascade=cascade,
            health_check=argv,
            bake_seconds=bake_seconds,
            on_batch=report,
            engine=runs_with,
        )
    with db.session.begin() as s:
        events.record(
            s,
            "patch.rollback",
            patch=get_patch(s, patch_ref),
            selector=pattern or "all",
            cascade=cascade,
            fast=fast,
            to=previous.name if previous is not None else None,
            results={a.host: a.result for a in answers},
        )
    rows = [
        {"host": a.host, "result": a.result, "removed": a.removed, "detail": a.detail, "klp_error": a.klp_error}
        for a in answers
    ]
    emit(
        "rollback",
        rows,
        output,
        lambda rows, out: table(
            None,
            ["host", "result", "removed", "detail"],
            [[r["host"], r["result"], r["removed"], r["detail"]] for r in rows],
            out,
        ),
    )
    ctx.exit(0 if all(a.result in (REMOVED, "nothing_to_remove") for a in answers) else 1)
