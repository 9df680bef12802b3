from __future__ import annotations

from typing import Any

import click

from klpfleet.cli import completion
from klpfleet.cli.context import database
from klpfleet.cli.host_options import group_option, hosts_option
from klpfleet.cli.output import emit, info, output_option, table
from klpfleet.reads.views import list_patches, patch_record
from klpfleet.registry.modinfo import read_livepatch
from klpfleet.registry.patches import add_patch, find_patches
from klpfleet.wording import counted


@click.group()
def patch() -> None:
    """Register and inspect livepatch artifacts."""


@patch.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--description", help="What the patch fixes.")
@click.option("--cve", "cves", multiple=True, help="CVE id it fixes; repeatable.")
@output_option
@click.pass_context
def add(ctx: click.Context, file: str, description: str | None, cves: tuple[str, ...], output: str) -> None:
    """Register FILE.ko: reads .modinfo, checksums it, keeps a copy. The same file twice is a no-op."""
    read_livepatch(file)  # refuse a bad file before touching the database
    from klpfleet.registry.patches import change_cves

    db = database(ctx)
    with db.session.begin() as session:
        row, created = add_patch(session, file, description=description, cves=list(cves))
        new = [] if created else change_cves(session, row, add=cves)  # a CVE named again with the same file
        record = patch_record(session, row)
    said = f"{'registered' if created else 'already registered'}: {row.name} {row.sha256[:12]} for {row.kernel_release}"
    info(said + (f"; now also fixes {', '.join(new)}" if new else ""))
    emit("patch", record, output, _patch_table)


@patch.command("cve")
@click.argument("action", type=click.Choice(["add", "remove"]))
@click.argument("patch_ref", metavar="PATCH", shell_complete=completion.patches)
@click.argument("cves", metavar="CVE-ID...", nargs=-1, required=True)
@click.pass_context
def cve(ctx: click.Context, action: str, patch_ref: str, cves: tuple[str, ...]) -> None:
    """Add or remove CVEs a registered PATCH fixes (`klpfleet cves` reports by them); each change is an event.

    \b
    Examples:
      klpfleet patch cve add livepatch_cve_2026_1234 CVE-2026-5555
      klpfleet patch cve remove livepatch_cve_2026_1234 CVE-2026-5555
    """
    from klpfleet.registry.patches import change_cves, get_patch

    with database(ctx).session.begin() as session:
        patch = get_patch(session, patch_ref)
        wanted = {"add": cves, "remove": ()} if action == "add" else {"add": (), "remove": cves}
        changed = change_cves(session, patch, **wanted)
        now = list(patch.cves or [])
        name = patch.name
    done = f"{action.rstrip('e')}ed {', '.join(changed)}" if changed else f"nothing to {action}"
    info(f"{name}: {done}; it fixes {', '.join(now) or 'no CVE'}")


@patch.command("list")
@output_option
@click.pass_context
def list_(ctx: click.Context, output: str) -> None:
    """Every registered patch."""
    with database(ctx).session() as session:
        rows = list_patches(session)
    emit(
        "patch.list",
        rows,
        output,
        lambda rows, out: table(
            None,
            ["name", "sha256", "kernel release", "size", "cves", "applied hosts", "added", "blocked"],
            [
                [
                    r["name"],
                    r["sha256"][:12],
                    r["kernel_release"],
                    r["size"],
                    r["cves"],
                    r["applied_hosts"],
                    r["added_at"],
                    "BLOCKED" if r["blocked"] else "",
                ]
                for r in rows
            ],
            out,
        ),
    )


@patch.command()
@click.argument("ref", shell_complete=completion.patches)
@output_option
@click.pass_context
def show(ctx: click.Context, ref: str, output: str) -> None:
    """One patch by name, name@sha-prefix or sha256 prefix; every match when the name is ambiguous."""
    from klpfleet.errors import UsageError
    from klpfleet.registry.patches import ensure_contents

    with database(ctx).session.begin() as session:
        found = find_patches(session, ref)
        if not found:
            raise UsageError(f"no patch {ref!r} (see `klpfleet patch list`)")
        for p in found:
            ensure_contents(session, p)  # a patch added before klpfleet read what it patches
        records = [patch_record(session, p, with_states=True) for p in found]

    def render(recs: list[dict[str, Any]], out: Any) -> None:
        for r in recs:
            _patch_table(r, out)
            _contents_table(r, out)

    emit("patch.show", records, output, render)


def _patch_table(record: dict[str, Any], out: Any) -> None:
    rows = [[k, v] for k, v in record.items() if k not in ("rollouts", "contents", "signature", "blocked")]
    blocked = record.get("blocked")
    said = f"since {blocked['at'][:16]}Z by {blocked['by']}: {blocked['reason']}" if blocked else "no"
    rows.append(["blocked", said])
    if "contents" in record:
        contents = record["contents"] or {}
        sig = record.get("signature")
        rows.append(["format", contents.get("format", "not read (the stored copy is gone or changed)")])
        rows.append(["replace", _replace_text(contents)])
        rows.append(["klp states", ", ".join(f"{s['id']} v{s['version']}" for s in contents.get("states", [])) or "-"])
        rows.append(
            [
                "signature",
                f"{sig['signer'] or '-'} ({sig['key_id_type']} {sig['key_id']}, {sig['hash_algo']})"
                if sig
                else "unsigned",
            ]
        )
    table(record["name"], ["field", "value"], rows, out)


def _replace_text(contents: dict[str, Any]) -> str:
    if contents.get("replace") is None:
        return f"unknown: {contents.get('replace_source', 'not read')}"
    return f"{'yes' if contents['replace'] else 'no'} ({contents.get('replace_source')})"


def _contents_table(record: dict[str, Any], out: Any) -> None:
    contents = record.get("contents") or {}
    callbacks = contents.get("callbacks") or {}
    rows = []
    for obj, funcs in (contents.get("objects") or {}).items():
        cbs = ", ".join(callbacks.get(obj, [])) or "-"
        for f in funcs or [{"function": "(no function)", "sympos": None}]:
            rows.append([obj, f["function"], "" if f["sympos"] is None else max(1, f["sympos"]), cbs])
    if rows:
        table(f"{record['name']} patches", ["object", "function", "sympos", "callbacks"], rows, out)


@patch.command("check")
@click.argument("patch_ref", metavar="PATCH", shell_complete=completion.patches)
@hosts_option("Ansible host pattern (default: every host).")
@group_option("Only hosts of this group.")
@click.option("--require-replace", is_flag=True, help="A patch that would stack on loaded functions is a refusal.")
@click.option(
    "--live", is_flag=True, help="Probe the hosts first (read-only, over SSH) instead of trusting the database."
)
@click.option("--all", "show_all", is_flag=True, help="List hosts whose verdict is ok too.")
@output_option
@click.pass_context
def check(
    ctx: click.Context,
    patch_ref: str,
    pattern: str | None,
    group: str | None,
    require_replace: bool,
    live: bool,
    show_all: bool,
    output: str,
) -> None:
    """Pre-flight: what each host would do with PATCH, before any host is touched.

    A host is `refuse` only when its kernel certainly refuses the load (the klp_error says how), `warn` when
    something deserves a look (stacking, signatures whose trust is not checked, a reboot owed, a transition
    running), `unknown` when klpfleet never read it. `rollout create` leaves the refusing hosts out.

    Exit status: 0 no host refuses, 1 some host would refuse, 2 bad input.

    \b
    Examples:
      klpfleet patch check livepatch_cve_2026_1234
      klpfleet patch check livepatch_cve_2026_1234 --group web --live -o json
    """
    from klpfleet.controller.selection import select_hosts
    from klpfleet.reads.preflight import OK, REFUSE, check_patch, summary
    from klpfleet.registry.patches import ensure_contents, get_patch

    db = database(ctx)
    names = select_hosts(db, pattern, group)
    if live:
        from klpfleet.probe.run import probe

        probe(db, names)
    with db.session.begin() as session:
        row = get_patch(session, patch_ref)
        ensure_contents(session, row)
        verdicts = check_patch(session, row, names, require_replace=require_replace)
        name = row.name
    counts = summary(verdicts)
    record = {
        "patch": name,
        "hosts": len(verdicts),
        "counts": counts,
        "verdicts": [v.as_dict() for v in verdicts.values() if show_all or v.verdict != OK],
    }
    info(
        f"{name}: {counts['ok']} ok, {counts['warn']} warn, {counts['refuse']} refuse, {counts['unknown']} unknown"
        f" of {counted(len(verdicts), 'host')}"
    )
    emit("patch.check", record, output, _check_table)
    ctx.exit(1 if counts[REFUSE] else 0)


def _check_table(d: dict[str, Any], out: Any) -> None:
    table(
        f"pre-flight of {d['patch']}",
        ["host", "verdict", "klp_error", "reasons"],
        [
            [v["host"], v["verdict"], v["klp_error"] or "", "; ".join(r["message"] for r in v["reasons"]) or "-"]
            for v in d["verdicts"]
        ],
        out,
    )


@patch.command("block")
@click.argument("patch_ref", metavar="PATCH", shell_complete=completion.patches)
@click.option("--reason", required=True, help="Why (one line, shown wherever the block is).")
@click.option("--rollback", "roll_back", is_flag=True, help="Also take it off every host now (`klpfleet rollback`).")
@click.option("--cascade", is_flag=True, help="With --rollback: remove patches stacked on top first.")
@click.option("--to", "previous_ref", metavar="PATCH", help="With --rollback of a cumulative patch: load this instead.")
@click.option("--allow-unpatched", is_flag=True, help="With --rollback: a cumulative patch may leave no livepatch.")
@output_option
@click.pass_context
def block_cmd(
    ctx: click.Context,
    patch_ref: str,
    reason: str,
    roll_back: bool,
    cascade: bool,
    previous_ref: str | None,
    allow_unpatched: bool,
    output: str,
) -> None:
    """Stop PATCH from loading anywhere again: no rollout, resume or reconcile of it starts, its planned and
    running rollouts pause, and each host drops it from its boot manifest at its next apply or gather.

    \b
    Examples:
      klpfleet patch block livepatch_cve_2026_1234 --reason 'INC-4411: soft lockups in nfsd'
      klpfleet patch block livepatch_cve_2026_1234 --reason 'INC-4411' --rollback --cascade
      klpfleet patch unblock livepatch_cve_2026_1234

    Exit status: 0 blocked (and with --rollback, removed wherever it ran), 1 some host still has it.
    """
    from klpfleet.cli.rollback_cmds import all_removed, rollback_table
    from klpfleet.cli.rollback_cmds import roll_back as run_rollback
    from klpfleet.controller.patch_block import block_patch, wait_for_drivers

    db = database(ctx)
    done = block_patch(db, patch_ref, reason)
    info(("blocked" if done.newly else "already blocked") + f": {done.sentence}")
    if done.paused:
        info(f"paused rollout {', '.join(map(str, done.paused))}")
    rows = None
    if roll_back:
        if done.running:
            info("waiting for the running rollouts' drivers to stop at their next safe point")
            wait_for_drivers(db, done.running)
        rows = run_rollback(
            db,
            f"{done.name}@{done.sha256}",
            cascade=cascade,
            fast=True,
            previous_ref=previous_ref,
            allow_unpatched=allow_unpatched,
        )
    record = {
        "patch": done.name,
        "sha256": done.sha256,
        "newly_blocked": done.newly,
        "block": done.block,
        "paused_rollouts": done.paused,
        "rollback": rows,
    }
    emit("patch.block", record, output, lambda r, out: rollback_table(r["rollback"], out) if r["rollback"] else None)
    ctx.exit(0 if rows is None or all_removed(rows) else 1)


@patch.command("unblock")
@click.argument("patch_ref", metavar="PATCH", shell_complete=completion.patches)
@click.pass_context
def unblock_cmd(ctx: click.Context, patch_ref: str) -> None:
    """Lift a block: PATCH may be rolled out again (its paused rollouts stay paused until resumed)."""
    from klpfleet.controller.patch_block import unblock_patch

    name, was = unblock_patch(database(ctx), patch_ref)
    info(f"unblocked {name}" if was else f"{name} was not blocked")
