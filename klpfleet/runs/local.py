"""A run on this machine: ansible-runner over a new run folder, the way AWX drives Ansible.

Per-host results come from ansible-runner's events (the module's structured result), never from parsing text.
Under Mitogen (the default where it is installed), a run that fails before any host answered is run again with
Ansible's own strategy; the outcome says so (`fallback`). No module ran, so nothing runs twice.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from klpfleet.collection import collections_path, playbooks_path
from klpfleet.runs.engine import Engine, failed_to_start, resolve
from klpfleet.runs.event_handler import RunEventHandler
from klpfleet.runs.folder import (
    JOB_ENVVARS,
    default_config,
    dump_unsafe_yaml,
    frozen_inventory,
    scrub_run_dir,
    write_extravars,
)
from klpfleet.runs.types import HostResult, RunOutcome, RunRequest, new_run_dir


def run_local(request: RunRequest) -> RunOutcome:
    """Run one playbook here over exactly the request's hosts, in a new folder under `runs_in`."""
    engine = request.engine or resolve("auto")
    outcome, error = _run_once(request, engine)
    answered = sum(1 for r in outcome.results.values() if r.status != "missing")
    if engine.name == "mitogen" and failed_to_start(outcome.status, answered):
        reason = f"Mitogen failed before any host answered: {error or 'no output'}"
        outcome, _ = _run_once(replace(request, ident=f"{request.ident}-ansible"), engine.fallback(reason))
        outcome.fallback = reason
    return outcome


def _run_once(request: RunRequest, engine: Engine) -> tuple[RunOutcome, str | None]:
    """One ansible-runner run: its outcome and the last error line it printed."""
    import ansible_runner

    workdir = new_run_dir(request.runs_in, request.ident)
    inventory = workdir / "inventory.yml"
    inventory.write_text(dump_unsafe_yaml(frozen_inventory(request.records)))
    write_extravars(workdir, request.extravars)
    recording = RunEventHandler(
        request.db, request.playbook, request.ident, request.rollout_id, {r["name"] for r in request.records}
    )

    envvars = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(
            p for p in (str(collections_path()), os.environ.get("ANSIBLE_COLLECTIONS_PATH")) if p
        ),
        **JOB_ENVVARS,
        **engine.envvars,
    }
    if "ANSIBLE_CONFIG" not in os.environ:
        envvars["ANSIBLE_CONFIG"] = str(default_config(workdir))
    try:
        runner = ansible_runner.run(
            private_data_dir=str(workdir),
            playbook=str(playbooks_path() / request.playbook),
            inventory=str(inventory),
            forks=request.forks,
            ident=request.ident,
            quiet=True,
            envvars=envvars,
            event_handler=recording.on_event,
            cancel_callback=request.cancel,
            settings={"suppress_ansible_output": True},
        )
    except BaseException:
        recording.interrupted()
        raise
    finally:
        scrub_run_dir(workdir)
    recording.finish(runner.status)
    results = recording.results
    for h in request.records:
        results.setdefault(h["name"], HostResult(h["name"], "missing", {"msg": "no result from the run"}))
    outcome = RunOutcome(results=results, status=runner.status, rc=runner.rc, directory=workdir, engine=engine.name)
    return outcome, _last_error(workdir / "artifacts" / request.ident / "stdout")


def _last_error(stdout: Path) -> str | None:
    """The run's last `ERROR` line (what made a run fail before any host answered)."""
    try:
        lines = stdout.read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line.strip() for line in lines if "ERROR" in line]
    return errors[-1][:300] if errors else None
