from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from klpfleet.cli.context import DURATION, database
from klpfleet.cli.host_options import group_option, hosts_option
from klpfleet.cli.output import emit, info, output_option, table
from klpfleet.wording import counted, listed


@click.command()
@hosts_option("Ansible host pattern (default: every host).")
@group_option("Only hosts of this group.")
@click.option("--forks", default=20, show_default=True, help="Hosts probed at once (a bounded pool).")
@click.option("--timeout", type=DURATION, default="30s", show_default=True, help="For the command on each host.")
@click.option(
    "--connect-timeout", type=DURATION, default="10s", show_default=True, help="To establish each SSH session."
)
@click.option("--known-hosts", type=click.Path(dir_okay=False), help="known_hosts file (default ~/.ssh/known_hosts).")
@click.option("--accept-new-host-keys", is_flag=True, help="Accept and record keys of hosts not in known_hosts.")
@output_option
@click.pass_context
def probe(
    ctx: click.Context,
    pattern: str | None,
    group: str | None,
    forks: int,
    timeout: float,
    connect_timeout: float,
    known_hosts: str | None,
    accept_new_host_keys: bool,
    output: str,
) -> None:
    """Read every host's live livepatch state over SSH (read-only) and mark drift.

    \b
    Examples:
      klpfleet probe --forks 50 --timeout 20
      klpfleet probe --group zone_a --known-hosts ~/.ssh/known_hosts -o json

    Exit status: 0 all reachable and no drift, 1 drift or unreachable hosts, 2 bad input, 3 database.
    """
    from klpfleet.controller.selection import select_hosts
    from klpfleet.errors import UsageError
    from klpfleet.probe.run import probe as run_probe

    if not 1 <= forks <= 500:
        raise UsageError("--forks must be between 1 and 500")
    db = database(ctx)
    names = select_hosts(db, pattern, group)
    results = run_probe(
        db,
        names,
        forks=forks,
        connect_timeout=connect_timeout,
        command_timeout=timeout,
        accept_new_host_keys=accept_new_host_keys,
        known_hosts=Path(known_hosts) if known_hosts else None,
    )
    by_status: dict[str, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    summary = {
        "hosts": len(results),
        "reachable": by_status.get("ok", 0),
        "unreachable": len(results) - by_status.get("ok", 0),
        "by_status": dict(sorted(by_status.items())),
        "drifted": sum(1 for r in results if r.drift),
        "refused_module_loads": sum(r.refused_module_loads for r in results),
        "accepted_host_keys": sum(1 for r in results if r.accepted_key),
    }
    data = {"summary": summary, "hosts": [asdict(r) for r in results]}
    info(
        f"probed {counted(len(results), 'host')}: reachable {summary['reachable']}, "
        f"unreachable {summary['unreachable']} ({listed(by_status)}), drifted {summary['drifted']}, "
        f"refused module loads {summary['refused_module_loads']}"
    )
    emit("probe", data, output, _table)
    ctx.exit(0 if summary["unreachable"] == 0 and summary["drifted"] == 0 else 1)


def _table(d: dict[str, Any], out: Any) -> None:
    table(
        None,
        ["host", "status", "kernel release", "patches", "drift", "seconds", "error"],
        [
            [
                h["host"],
                h["status"],
                h["kernel_release"],
                h["patches"],
                "; ".join(f"{x.get('patch', x['kind'])}: {x.get('found', '')}".strip() for x in h["drift"]) or None,
                h["seconds"],
                h["error"],
            ]
            for h in d["hosts"]
        ],
        out,
    )
