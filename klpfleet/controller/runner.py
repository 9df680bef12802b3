"""Running the collection's playbooks through ansible-runner, the way AWX drives Ansible.

Each run gets its own private data dir with an inventory frozen for exactly the hosts of that run.
Per-host results come from ansible-runner's events (the module's structured result), never from
parsing text. The recorder callback runs inside each playbook and writes host patch state, so a
controller run and a hand run are recorded by the same code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from klpfleet.collection import collections_path, playbooks_path
from klpfleet.controller.engine import Engine, failed_to_start, resolve
from klpfleet.db.engine import Database, default_data_dir
from klpfleet.inventory_export import TrustedTemplate, host_vars
from klpfleet.module_results import sanitize


@dataclass
class HostResult:
    host: str
    status: str  # ok | failed | unreachable | missing | lost (in flight on an execution node that failed)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def klp_error(self) -> str | None:
        value = self.result.get("klp_error")
        return value if isinstance(value, str) else None


@dataclass
class RunOutcome:
    results: dict[str, HostResult]
    status: str  # ansible-runner's: successful | failed | canceled | timeout
    rc: int | None
    directory: Path
    engine: str = "ansible"  # what ran it: mitogen | ansible
    fallback: str | None = None  # why Mitogen was given up for Ansible's own strategy during this run
    nodes: dict[str, Any] = field(default_factory=dict)  # execution node -> its NodeRun, when nodes ran it

    def node_failures(self) -> dict[str, Any]:
        return {name: run for name, run in self.nodes.items() if run.failure}


@dataclass(frozen=True)
class RunRequest:
    """One playbook over exactly these hosts, in a new folder under `runs_in` named after `ident`."""

    db: Database
    playbook: str
    records: list[dict[str, Any]]
    extravars: dict[str, Any]
    runs_in: Path
    ident: str
    forks: int
    rollout_id: int | None = None
    cancel: Callable[[], bool] | None = None


def runs_dir(db: Database) -> Path:
    """Run folders of one database: two databases never share one, whatever their rollout ids."""
    base = Path(os.environ.get("KLPFLEET_RUN_DIR") or default_data_dir() / "runs")
    return base / db.identity


def new_run_dir(parent: Path, name: str) -> Path:
    """A folder no earlier run used: ansible-runner reuses whatever it finds in a private data dir."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))


def frozen_inventory(records: list[dict[str, Any]]) -> dict[str, Any]:
    """An Ansible YAML inventory of exactly these hosts, with what the database knows of each."""
    return {"all": {"hosts": {h["name"]: host_vars(h) for h in records}}}


class _UnsafeDumper(yaml.SafeDumper):
    """Writes every string, keys included, as Ansible's `!unsafe`: Ansible never templates it."""


def _unsafe_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("!unsafe", value, style="'")


def _trusted_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style="'")


_UnsafeDumper.add_representer(str, _unsafe_str)
_UnsafeDumper.add_representer(TrustedTemplate, _trusted_str)


def dump_unsafe_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_UnsafeDumper, sort_keys=True, allow_unicode=True)


def write_extravars(private_data_dir: Path, extravars: dict[str, Any]) -> None:
    """A run's extra vars as ansible-runner's `env/extravars` file (it passes `-e @file`), every string
    `!unsafe`: a value from the database or a host is data to Ansible, never a template (not on a command line,
    where `-e '{"k": "{{ ... }}"}'` would be templated)."""
    env = private_data_dir / "env"
    env.mkdir(mode=0o700, exist_ok=True)
    (env / "extravars").write_text(dump_unsafe_yaml(extravars))


# Environment of every run, local or on a node. The controller records results itself, from the event stream,
# so the recorder callback stays silent and the run never sees the controller's database URL, nor any other
# secret klpfleet's own process may hold (ansible-runner passes the controller's environment on).
JOB_ENVVARS = {
    "ANSIBLE_RETRY_FILES_ENABLED": "False",
    "ANSIBLE_NOCOLOR": "1",
    "KLPFLEET_CONTROLLER_RECORDS": "1",
    "KLPFLEET_DB": "",
    "PGPASSWORD": "",
    "KLPFLEET_DASHBOARD_TOKEN": "",
}


def run_playbook(
    *,
    db: Database,
    playbook: str,
    records: list[dict[str, Any]],
    extravars: dict[str, Any],
    runs_in: Path,
    ident: str,
    forks: int,
    rollout_id: int | None = None,
    cancel: Callable[[], bool] | None = None,
    engine: Engine | None = None,
) -> RunOutcome:
    """Run one playbook over exactly these hosts in a new folder under `runs_in` (named after `ident`). Results are
    recorded here, from ansible-runner's event stream, by the recorder callback's own code: the run itself
    gets no database URL or password, and its folder holds no secret once it ends.

    Under Mitogen (the default where it is installed), a run that fails before any host answered is run again
    with Ansible's own strategy; the outcome says so (`fallback`). No module ran, so nothing runs twice.

    With execution nodes in the database, the hosts are split across them and each share runs on its node
    (klpfleet.nodes.dispatch); results are recorded here all the same."""
    from klpfleet.controller.runvars import checked
    from klpfleet.nodes.registry import nodes

    request = RunRequest(db, playbook, records, checked(extravars), runs_in, ident, forks, rollout_id, cancel)
    serving = nodes(db)
    if serving:
        from klpfleet.nodes.dispatch import run_on_nodes

        return run_on_nodes(serving, request)
    engine = engine or resolve("auto")
    outcome, error = _run_once(request, engine)
    answered = sum(1 for r in outcome.results.values() if r.status != "missing")
    if engine.name == "mitogen" and failed_to_start(outcome.status, answered):
        reason = f"Mitogen failed before any host answered: {error or 'no output'}"
        outcome, _ = _run_once(replace(request, ident=f"{ident}-ansible"), engine.fallback(reason))
        outcome.fallback = reason
    return outcome


class Recording:
    """One run's row in the database and its per-host results, fed from ansible-runner's events: the same
    for a local run and a job streamed back from an execution node."""

    def __init__(
        self,
        db: Database,
        playbook: str,
        ident: str,
        rollout_id: int | None,
        allowed: set[str] | None = None,
        delegation: bool = True,
    ) -> None:
        from klpfleet.db.events import default_actor
        from klpfleet.recorder import Recorder

        self.recorder = Recorder(db, actor=f"ansible:{default_actor()}")
        self.run_id = self.recorder.start_run(str(playbooks_path() / playbook), ident=ident, rollout_id=rollout_id)
        self.results: dict[str, HostResult] = {}
        self.stats: dict[str, Any] = {}
        self.allowed = allowed  # the hosts this run was given; a result for any other is never recorded
        self.delegation = delegation  # whether a result may name a delegate (only when Ansible ran here)

    def on_event(self, event: dict[str, Any]) -> bool:
        from klpfleet.recorder import livepatch_action_of

        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind == "playbook_on_stats":
            self.stats.update({k: data.get(k) or {} for k in ("ok", "changed", "failures", "dark", "skipped")})
        host = data.get("host")
        if not host or kind not in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            return True
        action = data.get("resolved_action") or data.get("task_action")
        if self.allowed is not None and host not in self.allowed:
            return True  # a result for a host this run was not given (a node's are judged whole in nodes.dispatch)
        # Bounded, known codes, valid names (klpfleet.module_results). A run whose stream comes from elsewhere (an
        # execution node) does not get to say a result belongs to a delegate: that would name another host.
        res = sanitize(data.get("res") or {})
        if not self.delegation:
            res.pop("_ansible_delegated_vars", None)
        status = {"runner_on_ok": "ok", "runner_on_failed": "failed"}.get(kind, "unreachable")
        self.recorder.record_task_result(self.run_id, host, str(action), status, res, data.get("task_args") or {})
        if kind == "runner_on_unreachable":
            self.results[host] = HostResult(host, "unreachable", res)
        elif livepatch_action_of(str(action), res):
            self.results[host] = HostResult(host, status, res)
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            self.results[host] = HostResult(host, "failed", {"msg": res.get("msg"), "task": data.get("task")})
        return True

    def finish(self, runner_status: str, extra: dict[str, Any] | None = None) -> None:
        stats = self.stats
        bad = any((stats.get("failures") or {}).values()) or any((stats.get("dark") or {}).values())
        ended = {"successful": "failed" if bad else "completed", "failed": "failed"}.get(runner_status, "interrupted")
        self.recorder.finish_run(self.run_id, ended, {"hosts": stats, **(extra or {})})

    def interrupted(self) -> None:
        with contextlib.suppress(Exception):  # the run's row must not stay "running"; the cause goes on up
            self.recorder.finish_run(self.run_id, "interrupted")


def _run_once(request: RunRequest, engine: Engine) -> tuple[RunOutcome, str | None]:
    """One ansible-runner run: its outcome and the last error line it printed."""
    import ansible_runner

    workdir = new_run_dir(request.runs_in, request.ident)
    inventory = workdir / "inventory.yml"
    inventory.write_text(dump_unsafe_yaml(frozen_inventory(request.records)))
    write_extravars(workdir, request.extravars)
    recording = Recording(
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


def scrub_run_dir(workdir: Path) -> None:
    """ansible-runner keeps the run's whole environment (the controller's, with any secret in it) in
    artifacts/*/command and env/: keep the command line, drop the environment."""
    shutil.rmtree(workdir / "env", ignore_errors=True)
    for command in workdir.glob("artifacts/*/command"):
        try:
            kept = json.loads(command.read_text())
            command.write_text(json.dumps({"command": kept.get("command"), "cwd": kept.get("cwd")}))
        except (OSError, ValueError):
            command.unlink(missing_ok=True)


# The configuration of every run klpfleet starts, unless the operator set ANSIBLE_CONFIG (jobs streamed to
# execution nodes always carry it, in their project folder).
DEFAULT_CONFIG = (
    "[defaults]\n"
    "interpreter_python = auto_silent\n"
    "host_key_checking = True\n"
    "retry_files_enabled = False\n"
    "[ssh_connection]\n"
    "pipelining = True\n"
)


def default_config(workdir: Path) -> Path:
    path = workdir / "ansible.cfg"
    path.write_text(DEFAULT_CONFIG)
    return path
