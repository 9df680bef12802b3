"""`klpfleet reconcile`: plan (and optionally run) rollouts that put back patches hosts should have and do not."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click

from klpfleet.cli import completion
from klpfleet.cli.context import database
from klpfleet.cli.host_options import group_option, hosts_option
from klpfleet.cli.output import emit, info, output_option, table
from klpfleet.cli.progress import drive_or_detach
from klpfleet.cli.rollout_options import engine_option, policy_from, preflight_options, rollout_policy_options
from klpfleet.wording import counted


@click.command("reconcile")
@click.option(
    "--patch",
    "patch_ref",
    metavar="PATCH",
    help="Only this patch (name, name@sha256 prefix or sha256).",
    shell_complete=completion.patches,
)
@hosts_option("Only hosts matching this Ansible host pattern.")
@group_option()
@click.option("--dry-run", is_flag=True, help="List the hosts and the reason each is included; plan nothing.")
@click.option("--start", is_flag=True, help="Start the planned rollouts in the background.")
@click.option(
    "--wait",
    is_flag=True,
    help="Drive the planned rollouts here, one after the other, then what they held back; each host and patch is "
    "tried at most --max-passes times.",
)
@click.option(
    "--max-passes",
    type=click.IntRange(1, 10),
    default=1,
    show_default=True,
    help="With --wait: how many times one invocation tries each host and patch.",
)
@rollout_policy_options
@preflight_options
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
    max_passes: int,
    output: str,
    no_preflight: bool,
    require_replace: bool,
    **options: Any,
) -> None:
    """Plan a rollout, per patch, of the hosts that should have it and do not: lost at a reboot, drifted,
    refused, unreachable, or stalled/failed and verified clean. The rollouts have the waves, gates and budgets
    of any rollout (the same options as `rollout create`).

    Exit status: 0 planned (or nothing to do), 1 a rollout driven with --wait did not complete, 2 bad input.

    \b
    Examples:
      klpfleet reconcile --dry-run
      klpfleet reconcile --patch livepatch_cve_2026_1234 --waves 1,100% --wait
    """
    from klpfleet.controller.reconcile import plan_reconcile
    from klpfleet.controller.selection import select_hosts

    policy = policy_from(ctx, options)
    db = database(ctx)
    names = select_hosts(db, pattern, group)
    selector = "reconcile" + "".join(f" {x}" for x in (f"group {group}" if group else None, pattern) if x)
    checks = {"preflight": not no_preflight, "require_replace": require_replace}
    planned = plan_reconcile(db, patch_ref, names, policy, selector, dry_run, None, **checks)
    emit("reconcile", planned, output, reconcile_table)
    ids = [p["rollout"] for p in planned if p["rollout"]]
    if dry_run or not ids:
        if not any(p["hosts"] for p in planned):
            info("nothing to reconcile: every host that should have a patch has it")
        return
    listing = f"{'rollout' if len(ids) == 1 else 'rollouts'} {', '.join(map(str, ids))}"
    info(f"planned {listing}; start with `klpfleet rollout start ID --wait`")
    if wait:
        from klpfleet.cli.progress import drive

        # A host that lost several patches is in one rollout at a time: drive these, then plan what they held back
        # (patches in registration order, so a stack comes back bottom first). Each host and patch is tried at most
        # --max-passes times per invocation: a host that refuses again is reported, not retried forever (the loop
        # ends because the pairs left to try only shrink).
        worst = 0
        tries: Counter[tuple[str, str]] = Counter()
        while ids:
            tries.update((h["host"], p["sha256"]) for p in planned if p["rollout"] for h in p["hosts"])
            for rid in ids:
                worst = max(worst, drive(ctx, rid))
                if ctx.meta.get("klpfleet.stopped_by_signal"):
                    info("stopped: nothing more is planned this time")
                    ctx.exit(worst)
            spent = {pair for pair, n in tries.items() if n >= max_passes}
            planned = plan_reconcile(db, patch_ref, names, policy, selector, dry_run=False, tried=spent, **checks)
            ids = [p["rollout"] for p in planned if p["rollout"]]
        left = plan_reconcile(db, patch_ref, names, policy, selector, dry_run=True)
        for p in left:
            for h in p["hosts"]:
                n = tries[(h["host"], p["sha256"])]
                info(f"left: {h['host']} without {p['patch']} ({h['reason']}), tried {counted(n, 'time')}")
        if any(p["hosts"] for p in left):
            info(f"`klpfleet reconcile --wait --max-passes {max_passes + 1}` tries them again")
        ctx.exit(worst)
    if start:
        for rid in ids:
            drive_or_detach(ctx, rid, wait=False)


def reconcile_table(d: list[dict[str, Any]], out: Any) -> None:
    for p in d:
        title = f"{p['patch']} {p['sha256'][:12]}" + (f": rollout {p['rollout']}" if p["rollout"] else "")
        if p["hosts"]:
            table(title, ["host", "why it is included"], [[h["host"], h["reason"]] for h in p["hosts"]], out)
        if p["skipped"]:
            table(f"{p['patch']}: left alone", ["host", "why"], [[h["host"], h["reason"]] for h in p["skipped"]], out)
