"""Talking to a node over SSH: the argv of the node's ansible-runner, its worker-info and a full check.

Host keys are checked the probe's way (known_hosts; an unknown key is refused unless the operator accepts it
once, at `node add --accept-new-host-key`). Commands are argv lists quoted with shlex for the remote shell;
no host or inventory data is ever part of them."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from klpfleet.nodes.registry import Node
from klpfleet.probe.ssh import (
    OK,
    TIMEOUT,
    CommandTimeout,
    KnownHosts,
    RunResult,
    Target,
    classify_connect_error,
    run_on_transport,
    run_remote,
)

# The worker's options and stream format klpfleet speaks (--keepalive-seconds, --worker-info, the artifacts
# zip) are ansible-runner 2.4's; a 3.x may change the protocol, so it is refused until tested.
MIN_RUNNER = (2, 4)
MAX_RUNNER_MAJOR = 2
# The collection's modules need this ansible-core on whatever runs ansible-playbook (meta/runtime.yml).
MIN_ANSIBLE_CORE = (2, 19)
CONNECT_TIMEOUT = 10.0
MAX_OUTPUT = 1024 * 1024  # worker-info and --version answers are a few hundred bytes


def known_hosts_of(node: Node) -> Path:
    from klpfleet.probe.run import default_known_hosts

    return Path(os.path.expanduser(node.known_hosts)) if node.known_hosts else default_known_hosts()


def target(node: Node) -> Target:
    return Target(name=node.name, address=node.host, port=node.port, user=node.user, key_file=node.key_file)


# Puts its first argument first on PATH, then runs the rest: the directory is a parameter, never script text.
WITH_PATH = 'd=$1; shift; PATH="$d:$PATH"; export PATH; exec "$@"'


def runner_argv(node: Node, *args: str) -> list[str]:
    """The node's ansible-runner with `args`."""
    return node_argv(node, node.runner, *args)


def node_argv(node: Node, program: str, *args: str) -> list[str]:
    """`program` on the node. When the runner is a path, its directory goes first on PATH, so the
    ansible-playbook of the same virtualenv runs the job (a non-login SSH command has the system's PATH)."""
    if "/" not in node.runner:
        return [program, *args]
    return ["sh", "-c", WITH_PATH, "sh", os.path.dirname(node.runner), program, *args]


def run_on(node: Node, argv: list[str], *, accept_new: bool = False, timeout: float = 60.0) -> RunResult:
    known = KnownHosts(known_hosts_of(node), accept_new)
    return run_remote(target(node), argv, "", known, CONNECT_TIMEOUT, timeout, max_output=MAX_OUTPUT)


def run_over(client: Any, node: Node, argv: list[str], timeout: float) -> RunResult:
    """`argv` on a connection already open to the node (the one its job will stream over)."""
    result = RunResult(node.name, OK)
    try:
        run_on_transport(client.get_transport(), shlex.join(argv), "", timeout, result, MAX_OUTPUT)
    except CommandTimeout:
        result.status, result.error = TIMEOUT, f"no answer within {timeout:g}s"
    except Exception as exc:
        if not classify_connect_error(exc, result, CONNECT_TIMEOUT):
            raise
    return result


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"[0-9]+", text)[:3])


@dataclass
class NodeCheck:
    """What `node check` found: how the node answered, its capacity and what stops it serving."""

    name: str
    reachable: bool = False
    ssh_status: str = OK
    cpu_count: int | None = None
    mem_in_bytes: int | None = None
    runner_version: str | None = None
    ansible_core: str | None = None
    accepted_key: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reachable and not self.problems

    @property
    def code(self) -> str | None:
        """The named failure the driver reports for a node that cannot take a job."""
        if not self.reachable:
            return "node_unreachable"
        return "node_incompatible" if self.problems else None

    def capacity(self) -> dict[str, Any]:
        return {
            "cpu_count": self.cpu_count,
            "mem_in_bytes": self.mem_in_bytes,
            "runner_version": self.runner_version,
            "ansible_core": self.ansible_core,
            "problems": self.problems,
            "ssh_status": self.ssh_status,
        }

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "reachable": self.reachable, "code": self.code, **self.capacity()}


def worker_info(node: Node, *, accept_new: bool = False, client: Any = None) -> NodeCheck:
    """One SSH round trip: `ansible-runner worker --worker-info` (ansible-runner >= 2.1 answers it), judged
    against the runner version klpfleet speaks. What the driver asks before streaming a job to a node, over the
    connection the job then uses (`client`); without one, a connection of its own."""
    check = NodeCheck(node.name)
    argv = runner_argv(node, "worker", "--worker-info")
    run = run_over(client, node, argv, 30.0) if client else run_on(node, argv, accept_new=accept_new, timeout=30.0)
    check.accepted_key = run.accepted_key
    if run.status != OK:
        check.ssh_status = run.status
        check.problems.append(f"{run.status}: {run.error}")
        return check
    check.reachable = True
    info: Any = None
    if run.exit_code == 0:
        try:
            info = yaml.safe_load(run.stdout)
        except yaml.YAMLError:
            info = None
    if not isinstance(info, dict) or "runner_version" not in info:
        check.problems.append(_runner_missing(node, run))
        return check
    # What a node says of itself is bounded: a node claiming 1e308 CPUs must not draw every host to itself.
    check.cpu_count = _bounded_int(info.get("cpu_count"), MAX_CPUS)
    check.mem_in_bytes = _bounded_int(info.get("mem_in_bytes"), MAX_MEMORY)
    check.runner_version = str(info.get("runner_version"))[:40]
    errors = info.get("errors")
    check.problems.extend(f"worker-info: {str(e)[:300]}" for e in (errors if isinstance(errors, list) else [])[:10])
    found = version_tuple(check.runner_version)
    if found[:2] < MIN_RUNNER or (found and found[0] > MAX_RUNNER_MAJOR):
        check.problems.append(
            f"ansible-runner {check.runner_version}: klpfleet streams jobs to ansible-runner "
            f"{'.'.join(map(str, MIN_RUNNER))} to {MAX_RUNNER_MAJOR}.x (pip install 'ansible-runner>=2.4,<3')"
        )
    return check


MAX_CPUS, MAX_MEMORY = 4096, 1 << 50  # beyond any machine a node runs on


def _bounded_int(value: Any, most: int) -> int | None:
    """A count a node reported: a whole number from 1 to `most`, else unknown."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
        return None
    return value


def _runner_missing(node: Node, run: RunResult) -> str:
    """Why `worker --worker-info` gave no answer: no runner at all, or one too old to have it."""
    said = (run.stderr.strip() or run.stdout.strip()).splitlines()
    tail = said[-1][:200] if said else f"exit {run.exit_code}"
    if run.exit_code == 127 or "not found" in tail or "No such file" in tail:
        return f"{node.runner} not found on the node (pip install ansible-runner ansible-core, or --runner PATH)"
    version = run_on(node, runner_argv(node, "--version"))
    if version.status == OK and version.exit_code == 0 and version.stdout.strip():
        return (
            f"ansible-runner {version.stdout.strip()[:40]} has no streaming worker: klpfleet needs "
            f"{'.'.join(map(str, MIN_RUNNER))} to {MAX_RUNNER_MAJOR}.x ({tail})"
        )
    return f"{node.runner} worker --worker-info failed: {tail}"


def check(node: Node, *, accept_new: bool = False) -> NodeCheck:
    """worker-info, then ansible-core: everything a node needs besides what the job brings (the collection,
    playbooks and .ko travel with each job)."""
    found = worker_info(node, accept_new=accept_new)
    if not found.reachable or found.problems:
        return found
    run = run_on(node, node_argv(node, "ansible-playbook", "--version"))
    first = run.stdout.strip().splitlines()[0] if run.status == OK and run.exit_code == 0 and run.stdout.strip() else ""
    m = re.search(r"core ([0-9][0-9.]*)", first)
    if not m:
        found.problems.append("no ansible-playbook next to the node's ansible-runner (pip install ansible-core)")
        return found
    found.ansible_core = m[1]
    if version_tuple(m[1])[:2] < MIN_ANSIBLE_CORE:
        found.problems.append(
            f"ansible-core {m[1]}: the collection needs {'.'.join(map(str, MIN_ANSIBLE_CORE))} or later"
        )
    return found
