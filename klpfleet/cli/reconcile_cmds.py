"""`klpfleet reconcile`: plan (and optionally run) rollouts that put back patches hosts should have and do not."""

from __future__ import annotations

from typing import Any

import click

from klpfleet.cli.context import database
from klpfleet.cli.output import emit, info, output_option, table
from klpfleet.cli.rollout_cmds import drive_or_detach, engine_option, rollout_policy_options


@click.command("reconcile")
@click.option("--patch", "patch_ref", metavar="PATCH", help="Only this patch (name, name@sha256 prefix or sha256).")
@click.option("--hosts", "pattern", metavar="PATTERN", help="Only hosts matching this Ansible host pattern.")
@click.option("--group", help="Only hosts of this inventory group (or label group such as zone_a).")
@click.option("--dry-run", is_flag=True, help="List the hosts and the reason each is included; plan nothing.")
@click.option("--start", is_flag=True, help="Start the planned rollouts in the background.")
@click.option("--wait", is_flag=True, help="Drive the planned rollouts here, one after the other.")
@rollout_policy_options
@engine_option
@output_option
@click.pass_context
def reconcile(
    ctx: click.Context,
    patch_ref: str | None,
    pattern: str | None,
    group: str | None,
    dry_run: bool,
    start: bool,
    wait: bool,
    output: str,
    **options: Any,
) -> None:
    """Plan a rollout, per patch, of the hosts that should have it and do not: lost at a reboot, drifted,
    refused, unreachable, or stalled/failed and verified clean. The rollouts have the waves, gates and budgets
    of any rollout (the same options as `rollout create`).

    Exit status: 0 planned (or nothing to do), 1 a rollout driven with --wait did not complete, 2 bad input.
    """
    from klpfleet.controller.policy import build_policy
    from klpfleet.controller.selection import select_hosts

    policy = build_policy(**options)
    db = database(ctx)
    names = select_hosts(db, pattern, group)
    selector = "reconcile" + "".join(f" {x}" for x in (f"group {group}" if group else None, pattern) if x)
    planned = _plan(db, patch_ref, names, policy, selector, dry_run)
    emit("reconcile", planned, output, _table)
    ids = [p["rollout"] for p in planned if p["rollout"]]
    if dry_run or not ids:
        if not any(p["hosts"] for p in planned):
            info("nothing to reconcile: every host that should have a patch has it")
        return
    info(f"planned rollout(s) {', '.join(map(str, ids))}; start with `klpfleet rollout start ID --wait`")
    if wait:
        from klpfleet.cli.rollout_cmds import drive

        # A host that lost several patches is in one rollout at a time: drive these, then plan what they held back
        # (patches in registration order, so a stack comes back bottom first).
        worst = 0
        while ids:
            worst = max([worst] + [drive(ctx, rid) for rid in ids])
            more = _plan(db, patch_ref, names, policy, selector, dry_run=False)
            ids = [p["rollout"] for p in more if p["rollout"]]
        ctx.exit(worst)
    if start:
        for rid in ids:
            drive_or_detach(ctx, rid, wait=False)


def _plan(db: Any, patch_ref: str | None, names: list[str], policy: Any, selector: str, dry_run: bool) -> list[Any]:
    """One rollout per patch with candidates; a host goes into the first patch's rollout that wants it, the next
    reconcile (or the --wait loop) plans the rest."""
    from sqlalchemy import select

    from klpfleet.controller.plan import create_rollout, make_plan, plan_record
    from klpfleet.controller.reconcile import candidates, patches_to_reconcile
    from klpfleet.db.models import Host, Rollout, WaveHost
    from klpfleet.registry.patches import get_patch
    from klpfleet.states import ACTIVE_ROLLOUT_STATUSES

    planned: list[dict[str, Any]] = []
    with db.session.begin() as s:
        patches = [get_patch(s, patch_ref)] if patch_ref else patches_to_reconcile(s)
        held = dict(
            s.execute(
                select(Host.name, Rollout.id)
                .join(WaveHost, WaveHost.host_id == Host.id)
                .join(Rollout, Rollout.id == WaveHost.rollout_id)
                .where(Rollout.status.in_([st.value for st in ACTIVE_ROLLOUT_STATUSES]))
            ).all()
        )
        for patch in patches:
            found = candidates(s, patch, names)
            for host in [h for h in found.included if h in held]:
                del found.included[host]
                found.skipped[host] = f"held by rollout {held[host]}: reconcile again once it ends"
            record: dict[str, Any] = {
                "patch": patch.name,
                "sha256": patch.sha256,
                "hosts": [{"host": h, "reason": r} for h, r in sorted(found.included.items())],
                "skipped": [{"host": h, "reason": r} for h, r in sorted(found.skipped.items())],
                "rollout": None,
            }
            if found.included and not dry_run:
                plan = make_plan(s, patch, sorted(found.included), policy)
                row = create_rollout(s, patch, plan, policy, selector)
                record.update(rollout=row.id, **plan_record(plan))
                held.update(dict.fromkeys(found.included, row.id))
            planned.append(record)
    return planned


def _table(d: list[dict[str, Any]], out: Any) -> None:
    for p in d:
        title = f"{p['patch']} {p['sha256'][:12]}" + (f": rollout {p['rollout']}" if p["rollout"] else "")
        if p["hosts"]:
            table(title, ["host", "why it is included"], [[h["host"], h["reason"]] for h in p["hosts"]], out)
        if p["skipped"]:
            table(f"{p['patch']}: left alone", ["host", "why"], [[h["host"], h["reason"]] for h in p["skipped"]], out)
