"""`klpfleet rollout ...`: plan, start, steer and read rollouts. Driving and the live view are in cli.progress."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from klpfleet.cli import completion
from klpfleet.cli.context import DURATION, ROLLOUT_ID, database
from klpfleet.cli.host_options import group_option, hosts_option
from klpfleet.cli.output import console, emit, info, output_option, printable, table
from klpfleet.cli.progress import EXIT, NO_DRIVER, NOT_FINISHED, drive, drive_or_detach
from klpfleet.cli.rollout_options import engine_option, policy_from, preflight_options, rollout_policy_options
from klpfleet.cli.rollout_view import outcome_bar, rollout_view
from klpfleet.wording import counted, short_list


@click.group()
def rollout() -> None:
    """Plan, run and steer rollouts: waves, gates, pause, promote, abort."""


@rollout.command()
@click.argument("patch_ref", metavar="PATCH", shell_complete=completion.patches)
@hosts_option("Ansible host pattern (globs, ':' unions, '!', '&').")
@group_option()
@rollout_policy_options
@preflight_options
@engine_option
@output_option
@click.pass_context
def create(
    ctx: click.Context,
    patch_ref: str,
    pattern: str | None,
    group: str | None,
    output: str,
    no_preflight: bool,
    require_replace: bool,
    **options: Any,
) -> None:
    """Plan a rollout of PATCH and print the waves; touches no host.

    \b
    Examples:
      klpfleet rollout create livepatch_cve_2026_1234 --waves 1,10%,50%,100% --by zone
      klpfleet rollout create livepatch_cve_2026_1234 --group web --max-failed 1 --max-refused 5% \\
          --bake 30m --health-check 'systemctl is-system-running' --on-failure rollback
      klpfleet rollout create livepatch_cve_2026_1234 --hosts 'zone_b:!web-17' -o json

    Hosts the pre-flight predicts would refuse the patch (another kernel, unsigned on a host that enforces
    signatures, incompatible system states; `klpfleet patch check` shows why) are left out; --no-preflight
    plans them anyway.
    """
    from klpfleet.controller.plan import create_rollout, make_plan, plan_record
    from klpfleet.controller.selection import select_hosts
    from klpfleet.registry.patches import get_patch

    policy = policy_from(ctx, options)
    db = database(ctx)
    names = select_hosts(db, pattern, group)
    with db.session.begin() as s:
        patch = get_patch(s, patch_ref)
        plan = make_plan(s, patch, names, policy, preflight=not no_preflight, require_replace=require_replace)
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
        f"planned rollout {record['id']}: {counted(sum(len(w['hosts']) for w in record['waves']), 'host')} in "
        f"{counted(len(record['waves']), 'wave')}; start it with `klpfleet rollout start {record['id']} --wait`"
    )
    emit("rollout.plan", record, output, _plan_table)


def _plan_table(d: dict[str, Any], out: Any) -> None:
    table(
        f"rollout {d['id']}: {d['patch']} {d['sha256'][:12]}",
        ["wave", "domain", "hosts", "names"],
        [[w["index"] + 1, w["domain"], len(w["hosts"]), short_list(w["hosts"])] for w in d["waves"]],
        out,
    )
    checks = d["policy"].get("analysis") or []
    if checks:  # what each wave will be judged on, as the operator can check it before starting
        table(
            f"analysis ({d['policy'].get('prometheus') or 'no Prometheus'})",
            ["check", "measures", "condition", "when"],
            [
                [
                    c["name"],
                    c.get("query") or f"transition {c.get('transition')}",
                    f"{c.get('compare', 'ratio')} to control {c['condition']}" if c.get("control") else c["condition"],
                    "background"
                    if c.get("background")
                    else (f"{c['count']} x every {c['interval']:g}s" if c["count"] > 1 else "once") + " in the bake",
                ]
                for c in checks
            ],
            out,
        )
    if d["excluded"]:
        table(
            f"excluded ({len(d['excluded'])})",
            ["host", "reason"],
            [[e["host"], e["reason"]] for e in d["excluded"]],
            out,
        )
    excluded = {e["host"] for e in d["excluded"]}
    warned = [v for v in d.get("preflight") or [] if v["host"] not in excluded]
    if warned:
        table(
            f"pre-flight warnings ({len(warned)}, planned)",
            ["host", "verdict", "reasons"],
            [
                [v["host"], v["verdict"], "; ".join(r["message"] for r in v["reasons"] if r["level"] != "ok")]
                for v in warned
            ],
            out,
        )


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
    if request(db, rollout_id, Request.ABORT, reason="aborted by an operator").status == "aborted":
        info(f"rollout {rollout_id} aborted before it started: no host was touched, and its hosts are free")
        return
    if driver_alive(db, rollout_id):
        info(f"rollout {rollout_id}: abort requested; its driver rolls back at the next safe point")
        return
    drive_or_detach(ctx, rollout_id, wait)


@rollout.command()
@click.argument("rollout_id", type=ROLLOUT_ID, shell_complete=completion.rollouts)
@click.pass_context
def delete(ctx: click.Context, rollout_id: int) -> None:
    """Delete a planned rollout that never started; its hosts are free for another."""
    from klpfleet.controller.control import delete_planned

    hosts = delete_planned(database(ctx), rollout_id)
    info(f"deleted rollout {rollout_id}; {counted(hosts, 'host')} free for another rollout")


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
                    f"{r['current_wave'] or '-'}/{r['waves']}",  # - : not started
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
@click.option("--interval", type=DURATION, default="2s", show_default=True, help="With --watch: how often to look.")
@click.option("--timeout", type=DURATION, help="With --watch: give up after this long (exit 3).")
@output_option
@click.pass_context
def status(
    ctx: click.Context, rollout_id: int, watch: bool, interval: float, timeout: float | None, output: str
) -> None:
    """One rollout: waves, outcomes, gates and decisions.

    Exit status: 0 completed; 1 paused, aborted or rolled back; 2 the controller failed; 3 still running (without
    --watch, or past --timeout); 4 (--watch) running with no driver: its controller stopped.
    """
    from klpfleet.reads.rollouts import rollout_record

    db = database(ctx)
    if not watch:
        with db.session() as s:
            data = rollout_record(s, rollout_id)
        emit("rollout", data, output, _status_table)
        ctx.exit(EXIT.get(data["status"], NOT_FINISHED))
    if output != "table":
        ctx.exit(_watch(db, rollout_id, interval, timeout, _changes(output)))
    from rich.live import Live

    with Live(console=console(), auto_refresh=False, transient=False) as live:
        code = _watch(db, rollout_id, interval, timeout, lambda data: live.update(rollout_view(data), refresh=True))
    ctx.exit(code)


# How long --watch sees a running rollout without a driver before it says so: a driver that just started (or is
# being started by `rollout resume`) takes its lease within a second or two.
NO_DRIVER_GRACE = 10.0


def _watch(db: Any, rollout_id: int, interval: float, timeout: float | None, show: Any) -> int:
    """Read the rollout every `interval` and show it, until it ends or pauses, its driver is gone, or `timeout`."""
    from klpfleet.reads.rollouts import rollout_record

    started = time.monotonic()
    driverless_since: float | None = None
    while True:
        with db.session() as s:
            data = rollout_record(s, rollout_id, event_limit=8)
        show(data)
        now = time.monotonic()
        if data["status"] in EXIT:
            return EXIT[data["status"]]
        orphaned = data["status"] in ("running", "aborting") and not data["driven"]
        driverless_since = (driverless_since or now) if orphaned else None
        if driverless_since is not None and now - driverless_since >= max(NO_DRIVER_GRACE, 2 * interval):
            info(
                f"rollout {rollout_id} is {data['status']} with no driver (its controller stopped); "
                f"continue it with `klpfleet rollout resume {rollout_id} --wait`"
            )
            return NO_DRIVER
        if timeout is not None and now - started >= timeout:
            info(f"rollout {rollout_id} is still {data['status']} after {timeout:g}s")
            return NOT_FINISHED
        time.sleep(interval)


def _changes(output: str) -> Any:
    """--watch for scripts: the rollout's record each time it changes, one document per line."""
    import json

    from klpfleet.reads.envelope import envelope

    last: list[str] = []

    def show(data: dict[str, Any]) -> None:
        doc = envelope("rollout", data)
        shown = json.dumps(doc["data"], sort_keys=True, default=str)
        if last and shown == last[0]:
            return
        if output == "json":
            sys.stdout.write(json.dumps(doc, separators=(",", ":"), default=str) + "\n")
        else:
            import yaml

            sys.stdout.write("---\n" + yaml.safe_dump(doc, sort_keys=False))
        sys.stdout.flush()
        last[:] = [shown]

    return show


def _status_lines(d: dict[str, Any], bars: bool) -> list[list[Any]]:
    """A row per wave; on a terminal with its bar coloured by outcome (piped, the counts say the same)."""
    rows = []
    for w in d["waves"]:
        bar = [outcome_bar(w["outcomes"], len(w["hosts"]))] if bars else []
        rows.append([w["index"] + 1, w["domain"], w["status"], *bar, len(w["hosts"]), w["outcomes"]])
    return rows


def _analysis_tables(d: dict[str, Any], out: Any) -> None:
    """Each wave's transition times, and each check's latest measurement (a wave's, or the rollout's background)."""
    transitions = [[w["index"] + 1, *w["transition"].values()] for w in d["waves"] if w.get("transition")]
    if transitions:
        table("transition seconds", ["wave", "hosts", "p50", "p95", "max"], transitions, out)
    measured = [
        [w["index"] + 1, w["analysis"]["result"], name, m["result"], m["value"], m["control"], m["reason"]]
        for w in d["waves"]
        if w.get("analysis")
        for name, m in sorted(w["analysis"]["checks"].items())
    ]
    measured += [
        [f"background (wave {m['wave']})", "-", name, m["result"], m["value"], m["control"], m["reason"]]
        for name, m in sorted((d.get("background_analysis") or {}).items())
    ]
    if measured:
        table("analysis", ["wave", "verdict", "check", "result", "value", "control", "reason"], measured, out)


def _status_table(d: dict[str, Any], out: Any) -> None:
    out.print(
        printable(f"rollout {d['id']}: {d['patch']} {d['sha256'][:12]}  status {d['status']}  ({d['driver']})"),
        markup=False,
    )
    if d["pause_reason"]:
        out.print(printable(f"reason: {d['pause_reason']}"), markup=False)
    bars = bool(out.is_terminal)
    columns = ["wave", "domain", "status", *(["progress"] if bars else []), "hosts", "outcomes"]
    table("waves", columns, _status_lines(d, bars), out)
    problems = [
        [w["index"] + 1, h["host"], h["outcome"] or h["status"], h["error_code"], h["attempts"], h["held_by"]]
        for w in d["waves"]
        for h in w["hosts"]
        if h["outcome"] not in (None, "applied")
    ]
    if problems:
        columns = ["wave", "host", "outcome", "error", "attempts", "held by"]
        table("hosts needing attention", columns, problems, out)
    if d.get("preflight"):
        table(
            "pre-flight (at planning)",
            ["host", "", "verdict", "klp_error", "why"],
            [
                [v["host"], "left out" if v["excluded"] else "planned", v["verdict"], v["klp_error"] or "",
                 "; ".join(v["reasons"][:3])]
                for v in d["preflight"]
            ],
            out,
        )  # fmt: skip
    _analysis_tables(d, out)
    table(
        "decisions",
        ["at", "actor", "event", "details"],
        [[e["at"], e["actor"], e["kind"], e["details"]] for e in d["events"]],
        out,
    )
