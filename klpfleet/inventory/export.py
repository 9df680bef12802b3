"""The fleet as an Ansible inventory: the records and the host vars that the `klpfleet.livepatch.fleet`
inventory plugin and the controller's frozen per-wave inventories are both built from.

Everything here comes from the database, so from inventories and hosts: it is data, never a template.
`host_vars` is the one place that decides what a host's vars are; both callers hand its values to Ansible
as unsafe (the plugin through Ansible's API, the frozen inventory as `!unsafe` YAML), except the one
template klpfleet itself writes for simulated hosts, marked `TrustedTemplate`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from sqlalchemy import BindParameter, Connection, bindparam, select, text

from klpfleet.db.engine import Database
from klpfleet.names import SHA256_RE

# How the repo's simulated hosts name their interpreter (the playbook's own Python). klpfleet writes this
# value itself; it is the only stored string Ansible may evaluate, and only as this host var.
PLAYBOOK_PYTHON = "{{ ansible_playbook_python }}"
CONNECTION_VARS = (
    ("address", "ansible_host"),
    ("port", "ansible_port"),
    ("user", "ansible_user"),
    ("key_file", "ansible_ssh_private_key_file"),
)


def group_name(text: str) -> str:
    """An Ansible group name for a label group (`zone_a`), a kernel release or a patch state: anything but
    letters, digits and _ becomes _. The inventory plugin and host selection both name groups this way."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


class TrustedTemplate(str):
    """A value klpfleet wrote itself and Ansible may template (see PLAYBOOK_PYTHON)."""


def host_vars(record: dict[str, Any]) -> dict[str, Any]:
    """One host's Ansible vars: connection columns, then the stored vars, then labels that do not shadow a
    var (a label named like a var never overrides it)."""
    hv: dict[str, Any] = {}
    for column, var in CONNECTION_VARS:
        if record[column] is not None:
            hv[var] = record[column]
    for key, value in record["vars"].items():
        if key == "ansible_python_interpreter" and value == PLAYBOOK_PYTHON:
            value = TrustedTemplate(value)
        hv[key] = value
    for key, value in record["labels"].items():
        hv.setdefault(key, value)
    # The builds blocked with `klpfleet patch block`: the playbooks take them out of the host's boot manifest.
    # Always set, so that a stored var of that name never stands in for the database's word.
    hv["klp_blocked"] = list(record.get("blocked", []))
    return hv


def host_details(
    conn: Connection, ids: list[int]
) -> tuple[dict[int, dict[str, str]], dict[int, list[str]], dict[int, dict[str, str]]]:
    """Labels, groups and patch states (patch name -> state) of these hosts, read in chunks so that a
    100,000-host fleet stays within every database's bound-parameter limit. With several builds of one
    patch name, the newest observation wins."""
    labels: dict[int, dict[str, str]] = defaultdict(dict)
    groups: dict[int, list[str]] = defaultdict(list)
    states: dict[int, dict[str, str]] = defaultdict(dict)
    for start in range(0, len(ids), 20_000):
        ids_param: BindParameter[list[int]] = bindparam("ids", ids[start : start + 20_000], expanding=True)
        for host_id, key, value in conn.execute(
            text("SELECT host_id, key, value FROM host_labels WHERE host_id IN :ids").bindparams(ids_param)
        ):
            labels[host_id][key] = value
        for host_id, name in conn.execute(
            text(
                "SELECT hg.host_id, g.name FROM host_groups hg JOIN groups g ON g.id = hg.group_id "
                "WHERE hg.host_id IN :ids ORDER BY g.name"
            ).bindparams(ids_param)
        ):
            groups[host_id].append(name)
        for host_id, name, state in conn.execute(
            text(
                "SELECT hp.host_id, p.name, hp.state FROM host_patches hp JOIN patches p ON p.id = hp.patch_id "
                "WHERE hp.host_id IN :ids ORDER BY hp.observed_at"
            ).bindparams(ids_param)
        ):
            states[host_id][name] = state
    return labels, groups, states


def blocked_builds(conn: Connection) -> list[str]:
    """The sha256 of every blocked patch, as the boot manifest names builds (a forged value is left out: the
    host's module would refuse the whole list)."""
    found = conn.execute(text("SELECT sha256 FROM patches WHERE blocked_at IS NOT NULL ORDER BY sha256")).scalars()
    return [sha for sha in found if isinstance(sha, str) and SHA256_RE.match(sha)]


def fleet_inventory(db: Database, host_names: list[str] | None = None) -> list[dict[str, Any]]:
    """Every host (or those named) with connection vars, stored vars, labels, groups and patch states."""
    from klpfleet.db.models import Host

    with db.session() as s:
        query = select(Host).order_by(Host.name)
        if host_names is not None:
            query = query.where(Host.name.in_(host_names))
        hosts = list(s.scalars(query))
        labels, groups, states = host_details(s.connection(), [h.id for h in hosts])
        blocked = blocked_builds(s.connection())
        return [
            {
                "name": h.name,
                "address": h.address,
                "port": h.port,
                "user": h.user,
                "key_file": h.key_file,
                "vars": dict(h.vars or {}),
                "kernel_release": h.kernel_release,
                "labels": labels.get(h.id, {}),
                "groups": groups.get(h.id, []),
                "patch_states": states.get(h.id, {}),
                "blocked": blocked,
            }
            for h in hosts
        ]
