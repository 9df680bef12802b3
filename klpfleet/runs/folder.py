"""A run's folder: the frozen inventory, the extra vars as `!unsafe` YAML, the Ansible configuration, the
environment every run gets, and what is scrubbed from the folder when the run ends. The same for a local run and a
job streamed to an execution node."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from klpfleet.inventory.export import TrustedTemplate, host_vars


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
