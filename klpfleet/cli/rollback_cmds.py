"""`klpfleet rollback`: the operator's options in, the controller's rollback plan and batches out."""

from __future__ import annotations

from typing import Any

import click

from klpfleet.cli import completion
from klpfleet.cli.context import database
from klpfleet.cli.host_options import hosts_option
from klpfleet.cli.output import emit, output_option, table
from klpfleet.cli.progress import CliProgress
from klpfleet.cli.rollout_options import engine_option
from klpfleet.wording import counted


@click.command("rollback")
@click.argument("patch_ref", metavar="PATCH", shell_complete=completion.patches)
@hosts_option("Only these hosts (Ansible host pattern).")
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
    db = database(ctx)
    rows = roll_back(
        db,
        patch_ref,
        pattern=pattern,
        cascade=cascade,
        fast=fast,
        bake=bake,
        health_check=health_check,
        forks=forks,
        previous_ref=previous_ref,
        allow_unpatched=allow_unpatched,
        engine=engine,
    )
    emit("rollback", rows, output, rollback_table)
    ctx.exit(0 if all_removed(rows) else 1)


def rollback_table(rows: list[dict[str, Any]], out: Any) -> None:
    table(
        None,
        ["host", "result", "removed", "detail"],
        [[r["host"], r["result"], r["removed"], r["detail"]] for r in rows],
        out,
    )


def all_removed(rows: list[dict[str, Any]]) -> bool:
    from klpfleet.controller.rollback import REMOVED

    return all(r["result"] in (REMOVED, "nothing_to_remove") for r in rows)


def roll_back(
    db: Any,
    patch_ref: str,
    *,
    pattern: str | None = None,
    cascade: bool = False,
    fast: bool = False,
    bake: str | None = None,
    health_check: str | None = None,
    forks: int = 20,
    previous_ref: str | None = None,
    allow_unpatched: bool = False,
    engine: str = "auto",
) -> list[dict[str, Any]]:
    """The rollback as `klpfleet rollback` runs it (progress on stderr): one row per host."""
    import shlex

    from klpfleet.controller.policy import parse_duration
    from klpfleet.controller.rollback_plan import plan_rollback, run_rollback
    from klpfleet.controller.selection import select_hosts
    from klpfleet.runs.engine import resolve as resolve_engine

    chosen = set(select_hosts(db, pattern)) if pattern else None
    plan = plan_rollback(db, patch_ref, chosen, previous_ref, allow_unpatched)
    argv = None if fast or not health_check else shlex.split(health_check)
    bake_seconds = 0.0 if fast or not bake else parse_duration(bake, "--bake")
    progress = CliProgress()
    progress.note(
        f"rolling back {plan.patch_name} from {counted(len(plan.hosts), 'host')} "
        f"in {counted(len(plan.batches), 'batch')}"
    )
    if plan.previous is not None:
        progress.note(f"loading {plan.previous.name} in its place first")

    def report(n: int, answers: list[Any]) -> None:
        progress.note(f"batch {n + 1}: " + ", ".join(f"{x.host} {x.result}" for x in answers)[:300])

    answers = run_rollback(
        db,
        plan,
        forks=forks,
        engine=resolve_engine(engine),
        cascade=cascade,
        health_check=argv,
        bake_seconds=bake_seconds,
        selector=pattern or "all",
        fast=fast,
        on_batch=report,
    )
    return [
        {"host": a.host, "result": a.result, "removed": a.removed, "detail": a.detail, "klp_error": a.klp_error}
        for a in answers
    ]
