"""The front door for running a playbook: the hosts are split across execution nodes when the database has any,
else run here. Either way the results are recorded on this controller, from the run's event stream, by the
recorder's own code: the run gets no database URL or password, and its folder holds no secret once it ends."""

from __future__ import annotations

from dataclasses import replace

from klpfleet.db.engine import Database
from klpfleet.errors import UsageError
from klpfleet.nodes.dispatch import run_on_nodes
from klpfleet.nodes.registry import nodes
from klpfleet.runs.engine import Engine, resolve
from klpfleet.runs.local import run_local
from klpfleet.runs.types import RunOutcome, RunRequest
from klpfleet.runs.variables import checked


def run_playbook(request: RunRequest) -> RunOutcome:
    """Run one playbook over exactly the request's hosts; its extra vars are checked first (RunVarsError)."""
    request = replace(request, extravars=checked(request.extravars))
    serving = nodes(request.db)
    return run_on_nodes(serving, request) if serving else run_local(request)


def engine_for(db: Database, requested: str) -> Engine:
    """What runs a rollout's playbooks on this machine: the policy's engine, or Ansible's own strategy when Mitogen
    is asked for but not installed here (the reason kept). Execution nodes run Ansible's own strategy (a node needs
    only ansible-core and ansible-runner)."""
    if nodes(db):
        return Engine("ansible", requested, {}, "execution nodes run the jobs, with Ansible's own strategy")
    try:
        return resolve(requested)
    except UsageError as exc:
        return Engine("ansible", requested, {}, str(exc))
