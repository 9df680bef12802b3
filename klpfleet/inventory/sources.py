"""Importing hosts from any Ansible inventory source, read by ansible-core's own inventory manager.

Only what klpfleet needs is kept: connection vars, klp_* vars, groups and failure-domain labels.
Secrets (passwords, become passwords, vault values) are never read into the database.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import re
import signal
from dataclasses import dataclass
from typing import Any

from klpfleet.errors import UsageError
from klpfleet.inventory.ansible_vars import InventoryVars, captured_ansible_warnings, load_vault_secrets, most_telling
from klpfleet.names import HOST_NAME_RE

DEFAULT_LABEL_KEYS = ("zone", "rack", "region", "datacenter", "failure_domain")
# The host vars stored in hosts.vars: an allow-list (how to connect, and the klp_* settings the playbooks
# and modules read per host). Anything else, whatever its name, is never stored: a secret cannot slip in
# under a name a filter did not foresee.
KEPT_VARS = frozenset(
    {
        "ansible_connection",
        "ansible_become_method",
        "ansible_become_user",
        "ansible_python_interpreter",
        "ansible_ssh_common_args",
        "ansible_ssh_extra_args",
        "klp_backend",
        "klp_sim_root",
        "klp_sim_unreachable",
        "klp_become",
        "klp_remote_dir",
        "klp_persist",
        "klp_persist_dir",
        "klp_patch_params",
        "klp_transition_timeout",
        "klp_on_stall",
        "klp_allow_force",
        "klp_busy_retries",
        "klp_busy_delay",
        "klp_health_timeout",
    }
)
# Kept vars and labels whose text carries a credential are refused (the name is reported, never the value).
SECRET_TEXT_RE = re.compile(
    r"sshpass"
    r"|(passw(or)?d|secret|token|api[_-]?key|access[_-]?key)([_-][A-Za-z0-9]+)*\s*[=:]"  # NAME=..., NAME_X: ...
    r"|(^|\s)--?(password|passwd|pass|secret|token|api-?key)(\s|=|$)"  # --password x
    r"|[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"  # scheme://user:password@host
    r"|authorization\s*:|bearer\s+\S"  # an HTTP header
    r"|BEGIN [A-Z ]*PRIVATE KEY",
    re.IGNORECASE,
)
SECRET_NAME_RE = re.compile(r"pass|secret|token|vault|api_?key|cred", re.IGNORECASE)
# Read into the host's own columns (address, port, user, key file).
CONNECTION_VARS = frozenset(
    {"ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file", "ansible_private_key_file"}
)
LABEL_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
LABEL_VALUE_MAX = 200


@dataclass
class InventoryHost:
    name: str
    address: str | None
    port: int | None
    user: str | None
    key_file: str | None
    vars: dict[str, Any]
    groups: list[str]
    labels: dict[str, str]


def prepare_ansible_env() -> None:
    """Settings ansible-core reads once, when its constants are first imported: call before anything imports
    ansible.constants (the import's fingerprint does)."""
    # A source Ansible cannot parse must fail the import, not become an empty inventory with a warning.
    os.environ.setdefault("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "True")
    os.environ.setdefault("ANSIBLE_INVENTORY_UNPARSED_WARNING", "False")
    os.environ.setdefault("ANSIBLE_LOCALHOST_WARNING", "False")
    # A host defined twice in one YAML mapping is a mistake, not "the last one wins".
    os.environ.setdefault("ANSIBLE_DUPLICATE_YAML_DICT_KEY", "error")


def enable_collection_inventory_plugins() -> None:
    """Let `inventory import` read sources handled by inventory plugins that live in collections
    (amazon.aws.aws_ec2, klpfleet.livepatch.fleet ...). This installs ansible-core's collection loader,
    which then owns the `ansible_collections` namespace: call it only in a process that does not also
    import klpfleet's own module_utils (the CLI command does not; the simulator and tests do)."""
    prepare_ansible_env()
    from ansible.plugins.loader import init_plugin_loader

    from klpfleet.collection import collections_path

    init_plugin_loader([str(collections_path())])


def read_inventory(sources: list[str], label_keys: tuple[str, ...] = DEFAULT_LABEL_KEYS) -> list[InventoryHost]:
    for source in sources:
        if "," not in source and not os.path.exists(source):
            raise UsageError(f"inventory source {source!r} does not exist")
    prepare_ansible_env()
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    loader = DataLoader()
    load_vault_secrets(loader)
    try:
        with captured_ansible_warnings() as warnings:
            manager = InventoryManager(loader=loader, sources=sources)
        inventory_vars = InventoryVars(loader, manager, sources, wanted_vars(label_keys))
        hosts = convert_hosts(manager.get_hosts(), inventory_vars, label_keys)
    except AnsibleError as exc:
        message = " ".join(str(getattr(exc, "message", exc)).split())
        raise UsageError(f"cannot read inventory: {message}{most_telling(warnings)}") from None
    if not hosts:
        # An empty result is far likelier a broken source than an empty fleet, and with --prune it would
        # remove every host from the database.
        raise UsageError(f"the inventory sources list no hosts: {', '.join(sources)}{most_telling(warnings)}")
    return hosts


# Below this many hosts a second process costs more than it saves.
PARALLEL_FROM = 20_000


def convert_hosts(found: list[Any], inventory_vars: InventoryVars, label_keys: tuple[str, ...]) -> list[InventoryHost]:
    """Ansible's hosts as InventoryHosts, in order. A large inventory is split with a forked child that
    converts the second half while this process converts the first (the parse before it uses one core; this
    uses both), and sends it back pickled."""

    def convert(part: list[Any]) -> list[InventoryHost]:
        out = []
        for host in part:
            hostvars, groups = inventory_vars.of(host)
            out.append(_to_inventory_host(host.name, hostvars, groups, label_keys))
        return out

    if len(found) < PARALLEL_FROM or (os.cpu_count() or 1) < 2:
        return convert(found)
    middle = len(found) // 2
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: convert, send, and leave without running any of the parent's cleanup
        code = 0
        try:
            os.close(reader)
            try:
                answer: tuple[str, Any] = ("hosts", convert(found[middle:]))
            except UsageError as exc:
                answer = ("error", str(exc))
            with os.fdopen(writer, "wb") as out:
                pickle.dump(answer, out, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(writer)
    try:
        first = convert(found[:middle])
        with os.fdopen(reader, "rb") as inp:
            try:
                kind, value = pickle.load(inp)  # noqa: S301  (our own child, through a private pipe)
            except (EOFError, pickle.UnpicklingError):
                # The child died of something unforeseen: convert its half here, so the error (if it was
                # one) surfaces as it would have without the child.
                kind, value = "hosts", None
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
        raise
    finally:
        os.waitpid(child, 0)
    if kind == "error":
        raise UsageError(value)
    second: list[InventoryHost] = value if value is not None else convert(found[middle:])
    return first + second


def wanted_vars(label_keys: tuple[str, ...]) -> frozenset[str]:
    """Every variable _to_inventory_host reads."""
    return KEPT_VARS | CONNECTION_VARS | {"klp_labels", *label_keys}


def _to_inventory_host(
    name: str, hostvars: dict[str, Any], groups: list[str], label_keys: tuple[str, ...]
) -> InventoryHost:
    if not HOST_NAME_RE.match(name):
        raise UsageError(f"refusing inventory host name {name!r}: not a host name")

    def text(key: str) -> str | None:
        value = hostvars.get(key)
        return None if value is None else str(_plain(name, key, value))

    port = hostvars.get("ansible_port")
    try:
        port = None if port is None else int(port)
    except (TypeError, ValueError):
        raise UsageError(f"host {name!r}: ansible_port {port!r} is not a number") from None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"host {name!r}: ansible_port {port} is out of range")

    kept = {k: _plain(name, k, hostvars[k]) for k in sorted(KEPT_VARS.intersection(hostvars))}
    for key, value in kept.items():
        where = _secret_in(value)
        if where is not None:
            raise UsageError(
                f"host {name!r}: {key}{where} looks like it holds a credential; klpfleet never stores secrets "
                "(keep it in a vault or an SSH agent, outside the inventory klpfleet imports)"
            )

    labels: dict[str, str] = {}
    extra = hostvars.get("klp_labels")
    if isinstance(extra, dict):
        labels.update({str(k): str(_plain(name, "klp_labels", v)) for k, v in extra.items()})
    for key in label_keys:
        if key in hostvars and hostvars[key] is not None:
            labels[key] = str(_plain(name, key, hostvars[key]))
    for key, value in labels.items():
        if not _label_name_ok(key):
            raise UsageError(f"host {name!r}: label {key[:64]!r} is not a label name (letters, digits, _)")
        if not _label_value_ok(value):
            raise UsageError(f"host {name!r}: label {key!r} is not a short printable value")

    return InventoryHost(
        name=name,
        address=text("ansible_host"),
        port=port,
        user=text("ansible_user"),
        key_file=text("ansible_ssh_private_key_file") or text("ansible_private_key_file"),
        vars=kept,
        groups=sorted(g for g in groups if g not in ("all", "ungrouped")),
        labels=dict(sorted(labels.items())),
    )


# Most values repeat across thousands of hosts (they come from group vars): check each distinct one once.
@functools.lru_cache(maxsize=65536)
def _holds_secret(text: str) -> bool:
    return bool(SECRET_TEXT_RE.search(text))


def _secret_in(value: Any, where: str = "") -> str | None:
    """Where in a kept value a credential hides (each string and each key, at any depth), or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            if SECRET_NAME_RE.search(str(key)):
                return f"{where}[{str(key)[:40]!r}]"
            found = _secret_in(item, f"{where}[{str(key)[:40]!r}]")
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for n, item in enumerate(value):
            found = _secret_in(item, f"{where}[{n}]")
            if found is not None:
                return found
    elif isinstance(value, str) and _holds_secret(value):
        return where
    return None


@functools.lru_cache(maxsize=1024)
def _label_name_ok(key: str) -> bool:
    return bool(LABEL_KEY_RE.match(key)) and not SECRET_NAME_RE.search(key)


@functools.lru_cache(maxsize=65536)
def _label_value_ok(value: str) -> bool:
    return len(value) <= LABEL_VALUE_MAX and value.isprintable() and not _holds_secret(value)


def _plain(host: str, var: str, value: Any) -> Any:
    """Ansible hands back its own str/dict subclasses; store plain JSON types. A vault-encrypted value is
    decrypted with the vault secrets Ansible is configured with, or refused in one line."""
    from ansible.errors import AnsibleError

    if isinstance(value, dict):
        return {str(k): _plain(host, var, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(host, var, v) for v in value]
    if isinstance(value, bool | int | float) or value is None:
        return value
    try:
        return str(value)
    except AnsibleError as exc:
        reason = " ".join(str(getattr(exc, "message", exc)).split())[:160]
        raise UsageError(
            f"host {host!r}: {var} is vault-encrypted and cannot be decrypted ({reason}); "
            "set ANSIBLE_VAULT_PASSWORD_FILE or ANSIBLE_VAULT_IDENTITY_LIST"
        ) from None
