"""A run split across execution nodes: each node gets the job for its share of the hosts, all nodes run in
parallel, and every event streamed back is recorded on the controller as it arrives (one run row per node).

The job carries everything the node needs besides ansible-core and ansible-runner: the playbooks, the
collection (playbook-adjacent, so nothing is installed on the node), the .ko and a frozen inventory of the
node's share with every value marked unsafe. It carries no database URL and no secret."""

from __future__ import annotations

import math
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from klpfleet.collection import collections_path, playbooks_path
from klpfleet.db import events
from klpfleet.errors import UsageError
from klpfleet.nodes.assign import assign
from klpfleet.nodes.registry import Node
from klpfleet.nodes.stream import Job, NodeRun, run_job
from klpfleet.runs.event_handler import RunEventHandler
from klpfleet.runs.folder import (
    DEFAULT_CONFIG,
    JOB_ENVVARS,
    dump_unsafe_yaml,
    frozen_inventory,
    scrub_run_dir,
    write_extravars,
)
from klpfleet.runs.types import HostResult, RunOutcome, RunRequest, new_run_dir
from klpfleet.wording import counted

COLLECTION = ("ansible_collections", "klpfleet", "livepatch")
# Events a node may send for one job: a few per host for klpfleet's one-task playbooks, and the run's own.
MAX_EVENTS, EVENTS_PER_HOST = 1000, 50
# What of the collection a node needs to run it; tests and changelogs stay home.
COLLECTION_PARTS = ("galaxy.yml", "meta", "plugins")


def build_job(directory: Path, request: RunRequest, records: list[dict[str, Any]], ident: str) -> Job:
    project = directory / "project"
    project.mkdir(parents=True)
    for book in playbooks_path().glob("*.yml"):
        shutil.copy2(book, project / book.name)
    (project / "ansible.cfg").write_text(DEFAULT_CONFIG)
    source = collections_path().joinpath(*COLLECTION)
    target = project.joinpath("collections", *COLLECTION)
    target.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in COLLECTION_PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, ignore=ignore)
        else:
            shutil.copy2(source / part, target / part)
    (directory / "inventory").mkdir()
    (directory / "inventory" / "hosts.yml").write_text(dump_unsafe_yaml(frozen_inventory(records)))
    job_vars = dict(request.extravars)
    src = job_vars.get("klp_patch_src")
    if isinstance(src, str) and Path(src).is_absolute():
        # The action plugin reads `src` on the machine that runs ansible-playbook: ship it in the playbook's files/.
        (project / "files").mkdir()
        shipped = project / "files" / Path(src).name
        shutil.copy2(src, shipped)
        job_vars["klp_patch_src"] = shipped.name
    write_extravars(directory, job_vars)
    deadline = job_deadline(request, len(records))
    return Job(directory, request.playbook, request.forks, ident, dict(JOB_ENVVARS), deadline)


def job_deadline(request: RunRequest, hosts: int) -> float:
    """How long a node's job may take before it is cut off (node_deadline): the batches its forks need, each
    given twice the transition timeout plus two minutes for the copy, the busy retries and SSH, and never less
    than 15 minutes. KLPFLEET_NODE_JOB_DEADLINE (seconds) overrides it."""
    explicit = os.environ.get("KLPFLEET_NODE_JOB_DEADLINE")
    if explicit:
        try:
            return max(1.0, float(explicit))
        except ValueError:
            raise UsageError(f"KLPFLEET_NODE_JOB_DEADLINE={explicit[:40]!r} is not a number of seconds") from None
    timeout = request.extravars.get("klp_transition_timeout", 60)
    batches = math.ceil(max(1, hosts) / max(1, request.forks))
    return max(900.0, batches * (2 * float(timeout) + 120))


def run_on_nodes(nodes: list[Node], request: RunRequest) -> RunOutcome:
    shares, unserved = assign(request.records, nodes)
    by_name = {n.name: n for n in nodes}
    workdir = new_run_dir(request.runs_in, request.ident)
    database = threading.Lock()  # one writer: SQLite takes one anyway, and the recorder is not shared-safe

    def one(name: str, share: list[dict[str, Any]]) -> tuple[NodeRun, dict[str, HostResult]]:
        node_ident = f"{request.ident}@{name}"
        job = build_job(workdir / f"job-{name}", request, share, node_ident)
        given = {record["name"] for record in share}
        with database:
            recording = RunEventHandler(request.db, request.playbook, node_ident, request.rollout_id, given, False)
        # A node's events are held until its stream ends, then recorded only if none names a host it was not
        # given: a node that forges one result is believed about nothing. Bounded, like everything a node sends.
        held: list[dict[str, Any]] = []
        limit = MAX_EVENTS + EVENTS_PER_HOST * len(share)

        def on_event(event: dict[str, Any]) -> None:
            if len(held) <= limit:
                held.append(event)

        try:
            run = run_job(by_name[name], job, on_event, request.cancel)
            forged = sorted({str(h)[:100] for h in map(_host_of, held) if h is not None and h not in given})
            if len(held) > limit and not run.failure:
                run.failure, run.detail = (
                    "node_stream_corrupt",
                    f"more than {limit} events for {counted(len(share), 'host')}",
                )
            elif forged:
                with database:
                    _forged(request, name, run, forged)
            else:
                with database:
                    for event in held:
                        recording.on_event(event)
        except BaseException:
            with database:
                recording.interrupted()
            raise
        finally:
            shutil.rmtree(job.private_data_dir, ignore_errors=True)
        with database:
            recording.finish("error" if run.failure else run.status, {"node": run.as_dict()})
        return run, recording.results

    results: dict[str, HostResult] = {}
    runs: dict[str, NodeRun] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, len(shares)), thread_name_prefix="node") as pool:
            futures = {name: pool.submit(one, name, share) for name, share in shares.items()}
            for name, future in futures.items():
                run, found = future.result()
                runs[name] = run
                for record in shares[name]:
                    host = record["name"]
                    results[host] = found.get(host) or _without_result(host, run)
    finally:
        scrub_run_dir(workdir)
    for record in unserved:
        labels = ", ".join(f"{k}={v}" for k, v in sorted((record.get("labels") or {}).items())) or "no labels"
        results[record["name"]] = HostResult(
            record["name"],
            "unreachable",
            {"msg": f"no execution node serves this host ({labels})", "klp_error": "no_node", "unreachable": True},
        )
    if any(r.status == "canceled" for r in runs.values()):
        status = "canceled"
    elif unserved or any(r.failure or r.status != "successful" for r in runs.values()):
        status = "failed"
    else:
        status = "successful"
    return RunOutcome(results=results, status=status, rc=None, directory=workdir, engine="ansible", nodes=runs)


def _without_result(host: str, run: NodeRun) -> HostResult:
    """A host the node's job returned nothing for: in flight when the job may have touched it."""
    if not run.failure:
        return HostResult(host, "missing", {"msg": "no result from the run", "node": run.node})
    detail = {
        "msg": f"execution node {run.node}: {run.failure}: {run.detail}",
        "klp_error": run.failure,
        "node": run.node,
    }
    if run.ran:
        return HostResult(host, "lost", detail)
    return HostResult(host, "unreachable", {**detail, "unreachable": True})


def _forged(request: RunRequest, node: str, run: NodeRun, hosts: list[str]) -> None:
    """A node sent results for hosts it was not given: a compromised or misconfigured node. Nothing it sent was
    recorded; its own hosts are left in flight (read again on resume) and the rollout pauses."""
    unique = sorted(set(hosts))
    run.failure, run.ran = "node_forged_result", True
    run.detail = f"results for {counted(len(unique), 'host')} it was not given ({', '.join(unique[:5])}); none recorded"
    with request.db.session.begin() as s:
        events.add(s, "node.forged_result", node=node, hosts=unique[:50], count=len(unique), ident=request.ident)


def _host_of(event: dict[str, Any]) -> Any:
    data = event.get("event_data")
    return data.get("host") if isinstance(data, dict) else None
