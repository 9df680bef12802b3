from __future__ import annotations

import sys
from typing import Any

import click

from klpfleet.cli import completion
from klpfleet.cli.context import DURATION, ROLLOUT_ID, database
from klpfleet.cli.output import emit, output_option, printable, table
from klpfleet.errors import DatabaseError, UsageError, first_line
from klpfleet.reads.envelope import iso, plain
from klpfleet.wording import counted


@click.command()
@click.option("--limit", default=50, show_default=True, help="How many hosts needing attention to list.")
@output_option
@click.pass_context
def status(ctx: click.Context, limit: int, output: str) -> None:
    """The fleet at a glance.

    \b
    Examples:
      klpfleet status                       # a monitoring check as it is: exit 0/1/2/3
      klpfleet status -o json | jq '.data.attention.by_state'

    Exit status: 0 healthy, 1 degraded (refused, unreachable, forced or drifted hosts, a blocked patch still
    running), 2 critical (stalled or failed hosts), 3 unknown (the database cannot be read).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from klpfleet.reads.fleet_status import HEALTH_EXIT, fleet_status

    try:
        with database(ctx).engine.connect() as conn:
            data = fleet_status(conn, attention_limit=limit)
    except (DatabaseError, SQLAlchemyError) as exc:
        # A damaged or unreadable database is "unknown" (3), never a health verdict.
        if isinstance(exc, SQLAlchemyError):
            exc = DatabaseError(f"cannot read the database: {first_line(exc)}")
        if output == "table":
            raise exc from None
        emit("status", {"health": "unknown", "error": str(exc)}, output, lambda d, o: None)
        ctx.exit(3)
    emit("status", data, output, status_table)
    ctx.exit(HEALTH_EXIT[data["health"]])


def status_table(d: dict[str, Any], out: Any) -> None:
    hosts = d["hosts"]
    out.print(
        f"fleet: {d['health'].upper()}  hosts {hosts['total']} (reachable {hosts['reachable']}, "
        f"unreachable {hosts['unreachable']})",
        markup=False,
    )
    if d.get("unknown_states"):
        out.print(
            f"{d['unknown_states']} host patch state(s) are none klpfleet writes (a hand-edited or damaged row): "
            "the health is unknown until a gather records the truth",
            markup=False,
        )
    table("hosts by kernel release", ["kernel release", "hosts"], sorted(hosts["by_kernel_release"].items()), out)
    table(
        "patches",
        ["patch", "sha256", "kernel release", "states"],
        [[p["name"], p["sha256"][:12], p["kernel_release"], p["states"] or "-"] for p in d["patches"]],
        out,
    )
    if d["rollouts"]:
        table(
            "active rollouts",
            ["id", "patch", "status", "wave", "reason"],
            [
                [
                    r["id"],
                    r["patch"],
                    r["status"],
                    f"{r['current_wave'] or '-'}/{r['waves']}",
                    r["pause_reason"],
                ]
                for r in d["rollouts"]
            ],
            out,
        )
    if d.get("cves"):
        table(
            "exposure per CVE (klpfleet cve CVE-ID)",
            ["cve", "covered", "exposed", "unknown"],
            [[c["cve"], c["covered"], c["exposed"], c["unknown"]] for c in d["cves"]],
            out,
        )
    debt = d.get("reboot_required") or {"total": 0, "hosts": []}
    if debt["total"]:
        table(
            f"reboot required ({debt['total']})",
            ["host", "since", "why"],
            [[h["host"], h["since"], "; ".join(r["why"] for r in h["reasons"])] for h in debt["hosts"]],
            out,
        )
    if d.get("blocked_patches"):
        table(
            "blocked patches (klpfleet patch unblock PATCH lifts a block)",
            ["patch", "since", "by", "reason", "still running on"],
            [
                [b["patch"], b["blocked_at"], b["blocked_by"], b["reason"], counted(b["running_on"], "host")]
                for b in d["blocked_patches"]
            ],
            out,
        )
    if d.get("preflight_excluded"):
        out.print(
            f"pre-flight: {d['preflight_excluded']} host(s) left out of active rollouts, they would refuse the patch"
            " (`klpfleet rollout status ID` lists why)",
            markup=False,
        )
    attention = d["attention"]
    if attention["total"]:
        shown = len(attention["hosts"])
        title = f"needs attention ({attention['total']}" + (f", {shown} shown)" if shown < attention["total"] else ")")
        table(
            title,
            ["host", "patch", "state", "reason", "error", "observed"],
            [
                [a["host"], a["patch"], a["state"], a["reason"], a["error_code"], a["observed_at"]]
                for a in attention["hosts"]
            ],
            out,
        )


@click.command()
@click.option("--state", help="Only hosts with a patch in this state.", shell_complete=completion.patch_states)
@click.option("--patch", "patch_ref", metavar="PATCH", help="Only hosts that have a state for this patch.")
@click.option("--group", help="Only hosts in this inventory group.", shell_complete=completion.groups)
@click.option(
    "--label", metavar="KEY=VALUE", help="Only hosts with this label (e.g. zone=a).", shell_complete=completion.labels
)
@click.option(
    "--reboot-required", is_flag=True, help="Only hosts that only a reboot can make clean (since when and why)."
)
@output_option
@click.pass_context
def hosts(
    ctx: click.Context,
    state: str | None,
    patch_ref: str | None,
    group: str | None,
    label: str | None,
    reboot_required: bool,
    output: str,
) -> None:
    """List hosts."""
    from klpfleet.reads.views import list_hosts

    if reboot_required:
        from klpfleet.reads.reboot_debt import reboot_debt

        with database(ctx).engine.connect() as conn:
            debt = reboot_debt(conn)
        emit(
            "hosts.reboot_required",
            debt,
            output,
            lambda rows, out: table(
                None,
                ["host", "since", "why"],
                [[h["host"], h["since"], "; ".join(r["why"] for r in h["reasons"])] for h in rows],
                out,
            ),
        )
        return

    label_pair = None
    if label is not None:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise UsageError(f"--label takes KEY=VALUE, not {label!r}")
        label_pair = (key, value)
    with database(ctx).session() as session:
        rows = list_hosts(session, state=state, patch=patch_ref, group=group, label=label_pair)
    emit(
        "hosts",
        rows,
        output,
        lambda rows, out: table(
            None,
            ["host", "address", "kernel release", "reachable", "labels", "patches"],
            [[r["name"], r["address"], r["kernel_release"], r["reachable"], r["labels"], r["patches"]] for r in rows],
            out,
        ),
    )


@click.command()
@click.argument("name", shell_complete=completion.hosts)
@click.option("--events", "event_limit", default=20, show_default=True, help="How many recent events.")
@output_option
@click.pass_context
def host(ctx: click.Context, name: str, event_limit: int, output: str) -> None:
    """One host: connection, labels, per-patch state and recent events."""
    from klpfleet.reads.views import host_detail

    with database(ctx).session() as session:
        data = host_detail(session, name, event_limit)
    emit("host", data, output, _host_table)


def _host_table(d: dict[str, Any], out: Any) -> None:
    table(
        d["name"],
        ["field", "value"],
        [
            [k, d[k]]
            for k in (
                "address",
                "port",
                "user",
                "kernel_release",
                "livepatch_supported",
                "reachable",
                "last_seen",
                "booted_at",
                "boot_id",
                "groups",
                "labels",
                "module_signatures",
            )
        ],
        out,
    )
    if d.get("reboot_required"):
        out.print("owes a reboot: " + "; ".join(r["why"] for r in d["reboot_required"]), markup=False)
    table(
        "patches",
        [
            "patch",
            "state",
            "enabled",
            "transition",
            "stack",
            "replace",
            "error",
            "errno",
            "refused object",
            "attempts",
            "observed",
            "by",
        ],
        [
            [
                p["patch"],
                p["state"],
                p["enabled"],
                p["transition"],
                p["stack_order"],
                p["replace"],
                p["error_code"],
                p["errno"],
                p["refused_object"],
                p["attempts"],
                p["observed_at"],
                p["observed_by"],
            ]
            for p in d["patches"]
        ],
        out,
    )
    stalled = [(p["patch"], task) for p in d["patches"] for task in p["stalled_tasks"] or [] if isinstance(task, dict)]
    if stalled:
        # Who held the transition back, and where it sleeps: the top of its stack names the patched function.
        table(
            "stalled tasks",
            ["patch", "pid", "comm", "stack"],
            [
                [name, t.get("pid"), t.get("comm"), " < ".join(map(str, (t.get("stack") or [])[:4]))]
                for name, t in stalled
            ],
            out,
        )
    if d.get("functions"):
        table(
            "patched functions (top of the stack first; `klpfleet functions` for the fleet)",
            ["object", "function", "in effect", "patches", "order from"],
            [
                [f["object"], f"{f['function']},{f['sympos']}", f["in_effect"], " > ".join(f["patches"]),
                 f["stack_order_source"]]
                for f in d["functions"]
            ],
            out,
        )  # fmt: skip
    _events_table(d["events"], out)


def _events_table(events: list[dict[str, Any]], out: Any) -> None:
    table(
        "events",
        ["at", "actor", "kind", "host", "patch", "rollout", "details"],
        [[e["at"], e["actor"], e["kind"], e["host"], e["patch"], e["rollout"], e["details"]] for e in events],
        out,
    )


@click.command("events")
@click.option("--host", "host_name", help="Only events about this host.", shell_complete=completion.hosts)
@click.option("--rollout", "rollout_id", type=ROLLOUT_ID, help="Only events of this rollout.")
@click.option("--kind", help="Only events of this kind (prefix match, e.g. 'host.').")
@click.option("--limit", default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they are recorded (Ctrl-C stops).")
@click.option("--interval", type=DURATION, default="1s", show_default=True, help="With --follow: how often to look.")
@output_option
@click.pass_context
def events_cmd(
    ctx: click.Context,
    host_name: str | None,
    rollout_id: int | None,
    kind: str | None,
    limit: int,
    follow: bool,
    interval: float,
    output: str,
) -> None:
    """The audit trail, newest first; with --follow, the last LIMIT oldest first and then each new event as it
    is recorded: a line each (one JSON object per line with -o json), like `tail -f`.

    \b
    Examples:
      klpfleet events --rollout 7
      klpfleet events --kind patch.state --host web-17 -o json
      klpfleet events -f --kind rollout.        # watch every rollout's decisions live
    """
    from sqlalchemy import select

    from klpfleet.db.models import Event
    from klpfleet.reads.views import event_record

    query = select(Event).order_by(Event.at.desc(), Event.id.desc()).limit(limit)
    if host_name:
        query = query.where(Event.host_name == host_name)
    if rollout_id is not None:
        query = query.where(Event.rollout_id == rollout_id)
    if kind:
        query = query.where(Event.kind.startswith(kind))
    db = database(ctx)
    with db.session() as session:
        # Where following starts, read first: the listing stops there and the loop prints everything after it,
        # so an event recorded meanwhile is printed once, whatever the database's isolation.
        top = session.scalar(query.with_only_columns(Event.id).order_by(None).order_by(Event.id.desc()).limit(1)) or 0
        rows = [event_record(e) for e in session.scalars(query.where(Event.id <= top))]
    if not follow:
        emit("events", rows, output, _events_table)
        return

    _follow_events(db, query, list(reversed(rows)), top, interval, output)


def _follow_events(db: Any, query: Any, first: list[dict[str, Any]], last: int, every: float, output: str) -> None:
    """Print the first events, then poll for ones with a higher id than `last` (read with them)."""
    import json
    import time

    from klpfleet.db.models import Event
    from klpfleet.reads.views import event_record

    def show(e: dict[str, Any]) -> None:
        if output == "json":
            click.echo(json.dumps(plain(e), separators=(",", ":")))
        else:
            where = " ".join(f"{k}={e[k]}" for k in ("host", "patch", "rollout") if e[k] is not None)
            details = json.dumps(plain(e["details"]), separators=(",", ":")) if e["details"] else ""
            parts = (iso(e["at"]), e["actor"], e["kind"], where, details)
            click.echo(printable(" ".join(p for p in parts if p)))

    for e in first:
        show(e)
    follow = query.order_by(None).limit(None).order_by(Event.id)
    while True:
        time.sleep(every)
        with db.session() as session:
            new = [event_record(e) for e in session.scalars(follow.where(Event.id > last).limit(1000))]
        for e in new:
            show(e)
            last = e["id"]
        sys.stdout.flush()
