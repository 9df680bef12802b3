"""`klpfleet node add|list|check|remove`: execution nodes that run the controller's Ansible jobs near the hosts.

Exit status: 0 done (every node checked is ready), 1 a node is unreachable or lacks what a job needs,
2 bad input, 3 the database cannot be read.
"""

from __future__ import annotations

import getpass
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click

from klpfleet.cli import completion
from klpfleet.cli.context import DURATION, database
from klpfleet.cli.output import emit, info, output_option, table
from klpfleet.wording import counted


@click.group("node")
def node() -> None:
    """Execution nodes: machines that run each wave's Ansible close to the hosts, through ansible-runner's
    streaming (transmit / worker / process over SSH). Results are recorded here; nodes hold no state.

    \b
    Examples:
      klpfleet node add eu1 --ssh runner@10.0.1.5 --key ~/.ssh/klpfleet --serves zone=eu-1
      klpfleet node list
      klpfleet node check eu1
      klpfleet node remove eu1
    """


@node.command("add")
@click.argument("name")
@click.option("--ssh", "ssh", required=True, metavar="USER@HOST[:PORT]", help="How to reach the node.")
@click.option("--key", "key_file", type=click.Path(dir_okay=False), help="SSH private key (default: the agent's).")
@click.option(
    "--known-hosts",
    type=click.Path(dir_okay=False),
    help="known_hosts checked for the node's key (default: ~/.ssh/known_hosts, or KLPFLEET_KNOWN_HOSTS).",
)
@click.option("--accept-new-host-key", is_flag=True, help="Trust and record the node's key if it is not known yet.")
@click.option(
    "--runner",
    default="ansible-runner",
    show_default=True,
    help="ansible-runner on the node: a path puts its virtualenv's ansible-playbook first on PATH.",
)
@click.option("--serves", metavar="LABEL=VALUE", help="Serve the hosts with this label (else: hosts no node serves).")
@click.option(
    "--keepalive",
    "keepalive",
    type=DURATION,
    default="5s",
    show_default=True,
    help="Between the worker's keepalive events (1s to 5m).",
)
@click.option(
    "--silent-after",
    "silent_after",
    type=DURATION,
    default="60s",
    show_default=True,
    help="Without a byte from the node before it counts as lost (node_silent; 5s to 1h).",
)
@click.option("--no-check", is_flag=True, help="Store the node without reaching it now.")
@output_option
@click.pass_context
def node_add(
    ctx: click.Context,
    name: str,
    ssh: str,
    key_file: str | None,
    known_hosts: str | None,
    accept_new_host_key: bool,
    runner: str,
    serves: str | None,
    keepalive: float,
    silent_after: float,
    no_check: bool,
    output: str,
) -> None:
    """Add an execution node; it is checked (worker-info, ansible-core) unless --no-check.

    The node needs only ansible-core and ansible-runner (`pip install ansible-core ansible-runner`, or
    `pip install klpfleet`); the playbooks, the collection and the .ko travel with each job."""
    from klpfleet.db.events import default_actor
    from klpfleet.nodes import registry, remote

    user, host, port = registry.parse_ssh(ssh, getpass.getuser())
    label, value = registry.parse_serves(serves)
    if not 1 <= keepalive <= 300 or not 5 <= silent_after <= 3600:
        raise click.UsageError("--keepalive takes 1s to 5m, --silent-after 5s to 1h")
    keepalive, silent_after = int(keepalive), int(silent_after)
    if silent_after <= keepalive:
        raise click.UsageError("--silent-after must be longer than --keepalive")
    new = registry.Node(name, user, host, port, key_file, known_hosts, runner, label, value, keepalive, silent_after)
    found = None if no_check else remote.check(new, accept_new=accept_new_host_key)
    if found is not None and found.ssh_status in ("host_key_unknown", "host_key_changed"):
        raise click.ClickException(
            f"node {name}: {found.problems[0]} (not added; --accept-new-host-key trusts a new key)"
        )
    db = database(ctx)
    registry.add(db, new, default_actor())
    if found is not None:
        registry.save_check(db, name, found.capacity())
        if found.accepted_key:
            info(f"node {name}: accepted host key {found.accepted_key}")
    if found is None:
        info(f"node {name} added without a check (klpfleet node check {name})")
        if output != "table":
            emit("node_check", {"name": name, "ok": None}, output, checks_table)
        ctx.exit(0)
    emit("node_check", found.as_dict(), output, checks_table)
    ctx.exit(0 if found.ok else 1)


@node.command("list")
@click.option("--check", "check_now", is_flag=True, help="Check every node now (in parallel) before listing.")
@output_option
@click.pass_context
def node_list(ctx: click.Context, check_now: bool, output: str) -> None:
    """Every node: how it is reached, what it serves, its capacity (CPUs, memory, ansible-runner and ansible-core
    versions, from its last check) and how many of the fleet's hosts it runs now."""
    from klpfleet.inventory.export import fleet_inventory
    from klpfleet.nodes import registry, remote
    from klpfleet.nodes.assign import assign

    db = database(ctx)
    known = registry.nodes(db)
    if check_now and known:
        with ThreadPoolExecutor(max_workers=min(16, len(known))) as pool:
            for found in pool.map(remote.check, known):
                registry.save_check(db, found.name, found.capacity())
        known = registry.nodes(db)
    shares, unserved = assign(fleet_inventory(db), known) if known else ({}, [])
    data = {
        "nodes": [{**n.as_dict(), "hosts": len(shares.get(n.name, []))} for n in known],
        "unserved_hosts": len(unserved) if known else 0,
    }
    emit("nodes", data, output, nodes_table)
    bad = any(n.capacity.get("problems") for n in known)
    ctx.exit(1 if (check_now and bad) else 0)


@node.command("check")
@click.argument("names", nargs=-1, shell_complete=completion.nodes)
@output_option
@click.pass_context
def node_check(ctx: click.Context, names: tuple[str, ...], output: str) -> None:
    """Reach nodes (all when none is named) and say what each lacks: SSH, the host key, ansible-runner (2.4 to
    2.x, with its streaming worker), ansible-core (2.19 or later). Exit 1 when one is not ready."""
    from klpfleet.nodes import registry, remote

    db = database(ctx)
    chosen = [registry.get(db, n) for n in names] if names else registry.nodes(db)
    if not chosen:
        info("no execution nodes (klpfleet node add NAME --ssh USER@HOST)")
        ctx.exit(0)
    with ThreadPoolExecutor(max_workers=min(16, len(chosen))) as pool:
        found = list(pool.map(remote.check, chosen))
    for f in found:
        registry.save_check(db, f.name, f.capacity())
    emit("node_checks", [f.as_dict() for f in found], output, checks_table)
    ctx.exit(0 if all(f.ok for f in found) else 1)


@node.command("remove")
@click.argument("name", shell_complete=completion.nodes)
@click.pass_context
def node_remove(ctx: click.Context, name: str) -> None:
    """Forget a node. Its hosts go to the other nodes that can serve them from the next run on (a wave under
    way is not affected); with no node left, runs are local again."""
    from klpfleet.db.events import default_actor
    from klpfleet.nodes import registry

    registry.remove(database(ctx), name, default_actor())
    info(f"node {name} removed")


def _memory(value: Any) -> str:
    return f"{value / 2**30:.1f} GiB" if isinstance(value, int) else "-"


def checks_table(d: Any, out: Any) -> None:
    rows = d if isinstance(d, list) else [d]
    table(
        "execution node checks",
        ["node", "ready", "cpus", "memory", "ansible-runner", "ansible-core", "problems"],
        [
            [
                r["name"],
                {True: "yes", False: "NO", None: "not checked"}[r["ok"]],
                r.get("cpu_count") or "-",
                _memory(r.get("mem_in_bytes")),
                r.get("runner_version") or "-",
                r.get("ansible_core") or "-",
                "; ".join(r.get("problems") or []) or "-",
            ]
            for r in rows
        ],
        out,
    )


def nodes_table(d: dict[str, Any], out: Any) -> None:
    if not d["nodes"]:
        info("no execution nodes: every run is local (klpfleet node add NAME --ssh USER@HOST)")
        return
    rows = []
    for n in d["nodes"]:
        c = n["capacity"]
        state = "not checked" if n["checked_at"] is None else ("NOT READY" if c.get("problems") else "ready")
        rows.append(
            [
                n["name"],
                n["ssh"],
                n["serves"] or "(unlabelled)",
                n["hosts"],
                c.get("cpu_count") or "-",
                _memory(c.get("mem_in_bytes")),
                c.get("runner_version") or "-",
                c.get("ansible_core") or "-",
                state,
            ]
        )
    table(
        "execution nodes",
        ["node", "ssh", "serves", "hosts", "cpus", "memory", "ansible-runner", "ansible-core", "state"],
        rows,
        out,
    )
    if d["unserved_hosts"]:
        info(f"{counted(d['unserved_hosts'], 'host')} no node serves: they are unreachable to rollouts until one does")
