"""Running the collection's playbooks through ansible-runner, the way AWX drives Ansible.

Each run gets its own private data dir with an inventory frozen for exactly the hosts of that run.
Per-host results come from ansible-runner's events (the module's structured result), never from
parsing text. The recorder callback runs inside each playbook and writes host patch state, so a
controller run and a hand run are recorded by the same code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from klpfleet.collection import collections_path, playbooks_path
from klpfleet.db.engine import default_data_dir
from klpfleet.inventory_export import TrustedTemplate, host_vars

PATCH_ACTIONS = {"klpfleet.livepatch.patch", "klpfleet.livepatch.patch_info"}


@dataclass
class HostResult:
    host: str
    status: str  # ok | failed | unreachable | missing
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


def runs_dir() -> Path:
    return Path(os.environ.get("KLPFLEET_RUN_DIR") or default_data_dir() / "runs")


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


def run_playbook(
    *,
    db_url: str,
    playbook: str,
    records: list[dict[str, Any]],
    extravars: dict[str, Any],
    workdir: Path,
    ident: str,
    forks: int,
    rollout_id: int | None = None,
    cancel: Callable[[], bool] | None = None,
    target_actions: set[str] | None = None,
) -> RunOutcome:
    import ansible_runner

    target_actions = target_actions or PATCH_ACTIONS
    workdir.mkdir(parents=True, exist_ok=True)
    inventory = workdir / "inventory.yml"
    inventory.write_text(dump_unsafe_yaml(frozen_inventory(records)))
    results: dict[str, HostResult] = {}

    def on_event(event: dict[str, Any]) -> bool:
        kind = event.get("event")
        data = event.get("event_data") or {}
        host = data.get("host")
        if not host or kind not in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            return True
        action = data.get("resolved_action") or data.get("task_action")
        res = data.get("res") or {}
        if kind == "runner_on_unreachable":
            results[host] = HostResult(host, "unreachable", res)
        elif action in target_actions:
            results[host] = HostResult(host, "ok" if kind == "runner_on_ok" else "failed", res)
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            results[host] = HostResult(host, "failed", {"msg": res.get("msg"), "task": data.get("task")})
        return True

    envvars = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(
            p for p in (str(collections_path()), os.environ.get("ANSIBLE_COLLECTIONS_PATH")) if p
        ),
        "ANSIBLE_CALLBACKS_ENABLED": "klpfleet.livepatch.recorder",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "KLPFLEET_DB": db_url,
        "KLPFLEET_RUN_IDENT": ident,
    }
    if "ANSIBLE_CONFIG" not in os.environ:
        envvars["ANSIBLE_CONFIG"] = str(_default_config(workdir))
    if rollout_id is not None:
        envvars["KLPFLEET_ROLLOUT_ID"] = str(rollout_id)
    runner = ansible_runner.run(
        private_data_dir=str(workdir),
        playbook=str(playbooks_path() / playbook),
        inventory=str(inventory),
        extravars=extravars,
        forks=forks,
        ident=ident,
        quiet=True,
        envvars=envvars,
        event_handler=on_event,
        cancel_callback=cancel,
        settings={"suppress_ansible_output": True},
    )
    for h in records:
        results.setdefault(h["name"], HostResult(h["name"], "missing", {"msg": "no result from the run"}))
    return RunOutcome(results=results, status=runner.status, rc=runner.rc, directory=workdir)


def _default_config(workdir: Path) -> Path:
    path = workdir / "ansible.cfg"
    path.write_text(
        "[defaults]\n"
        "interpreter_python = auto_silent\n"
        "host_key_checking = True\n"
        "retry_files_enabled = False\n"
        "[ssh_connection]\n"
        "pipelining = True\n"
    )
    return path
