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
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from klpfleet.db import events, locks
from klpfleet.db.models import Event, Group, Host, HostLabel, host_groups
from klpfleet.db.types import utcnow
from klpfleet.errors import UsageError

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

# Host names are stored and later handed to Ansible, SSH and the shell-free probe. They are never
# interpolated into a command, but a name no DNS or Ansible pattern could mean is refused up front.
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@\[\]-]{0,252}$")


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


@dataclass
class ImportResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("added", "updated", "unchanged", "removed")}


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
    _load_vault_secrets(loader)
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


class InventoryVars:
    """A host's variables as ansible-playbook sees them from the inventory: group vars (inventory and vars
    plugins such as group_vars/ beside the source) merged in ansible's configured precedence, then the host's
    own vars and host_vars/. What VariableManager.get_vars() gives for a host without a play, minus facts
    (klpfleet keeps none of them), restricted to `keys` when given, and at a tenth of its cost: the group
    part depends only on the host's groups, so it is merged once per distinct set of groups, not per host.
    Merging is per variable, so keeping only some variables before merging gives the same values.
    (tests/test_inventory.py compares the two on an inventory with every kind of source.)"""

    def __init__(self, loader: Any, manager: Any, sources: list[str], keys: frozenset[str] | None = None) -> None:
        self.loader, self.manager, self.sources, self.keys = loader, manager, sources, keys
        # By the identity of a host's groups (the same objects for every host in them), so a host costs a
        # lookup, not a sort.
        self._by_groups: dict[tuple[int, ...], tuple[dict[str, Any], list[str]]] = {}
        self._hosts_have_plugin_vars: bool | None = None

    def _only(self, found: dict[str, Any]) -> dict[str, Any]:
        if self.keys is None or not found:
            return found
        return {k: v for k, v in found.items() if k in self.keys}

    def _plugins(self, entities: list[Any]) -> dict[str, Any]:
        from ansible.vars.plugins import get_vars_from_inventory_sources

        return self._only(get_vars_from_inventory_sources(self.loader, self.sources, entities, "task"))

    def _group_vars(self, groups: list[Any]) -> dict[str, Any]:
        from ansible import constants as C
        from ansible.inventory.helpers import get_group_vars
        from ansible.utils.vars import combine_vars

        all_group = self.manager.groups["all"]
        parts = {
            "all_inventory": lambda: self._only(all_group.get_vars()),
            "all_plugins_inventory": lambda: self._plugins([all_group]),
            "groups_inventory": lambda: self._only(get_group_vars(groups)),
            "groups_plugins_inventory": lambda: self._plugins(groups),
            # Playbook-adjacent vars need a playbook; an import has none (as VariableManager without a play).
            "all_plugins_play": dict,
            "groups_plugins_play": dict,
        }
        merged: dict[str, Any] = {}
        for entry in C.VARIABLE_PRECEDENCE:
            if entry in parts:
                merged = combine_vars(merged, parts[entry]())
        return merged

    def of(self, host: Any) -> tuple[dict[str, Any], list[str]]:
        """(the host's variables, the names of its groups)."""
        from ansible.utils.vars import combine_vars

        key = tuple(map(id, host.get_groups()))
        if key not in self._by_groups:
            self._by_groups[key] = self._for_groups(host.get_groups())
        merged, names = self._by_groups[key]
        # host.vars, not host.get_vars(): the magic vars it adds are Ansible's, never kept.
        own = self._only(host.vars) if self.keys is not None else host.get_vars()
        if own:
            merged = combine_vars(merged, own)
        if self._any_host_plugin_vars():
            found = self._plugins([host])
            if found:
                merged = combine_vars(merged, found)
        return merged, names

    def _for_groups(self, groups: list[Any]) -> tuple[dict[str, Any], list[str]]:
        from ansible.inventory.helpers import sort_groups

        ordered = sort_groups([g for g in groups if g.name != "all"])
        return self._group_vars(ordered), [g.name for g in groups]

    def _any_host_plugin_vars(self) -> bool:
        """Whether vars plugins (host_vars/ and the like) give any host anything: asked once for all hosts
        together, so that an inventory without host_vars does not pay one plugin round per host."""
        if self._hosts_have_plugin_vars is None:
            self._hosts_have_plugin_vars = bool(self._plugins(self.manager.get_hosts()))
        return self._hosts_have_plugin_vars


def _load_vault_secrets(loader: Any) -> None:
    """The vault secrets ansible-playbook would use (ANSIBLE_VAULT_PASSWORD_FILE, ANSIBLE_VAULT_IDENTITY_LIST)."""
    from ansible import constants as C
    from ansible.cli import CLI
    from ansible.parsing.vault import VaultSecretsContext

    files = [C.DEFAULT_VAULT_PASSWORD_FILE] if C.DEFAULT_VAULT_PASSWORD_FILE else []
    secrets = []
    if files or C.DEFAULT_VAULT_IDENTITY_LIST:
        from ansible.errors import AnsibleError
        from ansible.utils.display import Display

        quiet = Display().warning
        Display().warning = lambda *args, **kwargs: None  # the error below says it all
        try:
            secrets = CLI.setup_vault_secrets(
                loader, vault_ids=C.DEFAULT_VAULT_IDENTITY_LIST, vault_password_files=files, ask_vault_pass=False
            )
        except AnsibleError as exc:
            raise UsageError(f"vault: {str(exc).splitlines()[0]}") from None
        finally:
            Display().warning = quiet
        loader.set_vault_secrets(secrets)
    if VaultSecretsContext.current(optional=True) is None:  # once per process, as Ansible's own CLIs do
        VaultSecretsContext.initialize(VaultSecretsContext(secrets))


def most_telling(warnings: list[str]) -> str:
    """Of Ansible's warnings (one per plugin that tried the source), the one that says what is wrong."""
    useful = [w for w in warnings if "No module named" not in w and "Failed to load inventory plugin" not in w]
    return f" ({(useful or warnings)[0]})" if warnings else ""


@contextlib.contextmanager
def captured_ansible_warnings() -> Iterator[list[str]]:
    """Ansible prints a multi-line warning per plugin that fails to parse a source; keep the first line of
    each instead, so a bad inventory is reported as one line."""
    from ansible.utils.display import Display

    display = Display()
    caught: list[str] = []

    def error_as_warning(msg: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
        text = str(getattr(exception, "message", None) or exception or msg or "")
        caught.append(" ".join(text.split("\n")[0].split()))

    def warning(msg: str, *_: Any, **__: Any) -> None:
        caught.append(" ".join(str(msg).split("\n")[0].split()))

    saved = display.__dict__.get("error_as_warning"), display.__dict__.get("warning")
    display.error_as_warning, display.warning = error_as_warning, warning
    try:
        yield caught
    finally:
        for name, value in zip(("error_as_warning", "warning"), saved, strict=True):
            if value is None:
                display.__dict__.pop(name, None)
            else:
                setattr(display, name, value)


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


def apply_import(session: Session, found: list[InventoryHost], *, prune: bool) -> ImportResult:
    """Make the database's hosts, groups and labels what the sources say, in one transaction, with an event per
    host added, changed or removed. Bulk statements, no ORM object per host: an unchanged 100,000-host
    inventory writes nothing, a new one is a few executemany() calls."""
    locks.serialize(session, locks.INVENTORY)  # concurrent imports: the second sees what the first wrote
    result = ImportResult()
    wanted: dict[str, dict[str, Any]] = {}
    for h in found:
        if h.name in wanted:
            raise UsageError(f"host {h.name!r} appears twice across the inventory sources")
        wanted[h.name] = _desired(h)
    conn = session.connection()
    hosts, groups, labels = _table(Host), _table(Group), _table(HostLabel)
    before = _current_hosts(conn)
    group_ids = dict(conn.execute(select(groups.c.name, groups.c.id)).all())

    added, changed = [], []
    for name, after in wanted.items():
        if name not in before:
            added.append(name)
        elif before[name][1] != after:
            changed.append(name)
        else:
            result.unchanged.append(name)
    result.added, result.updated = added, changed
    removed = sorted(set(before) - set(wanted)) if prune else []
    result.removed = removed
    if not (added or changed or removed):
        return result

    missing_groups = sorted({g for n in added + changed for g in wanted[n]["groups"]} - set(group_ids))
    if missing_groups:
        conn.execute(insert(groups), [{"name": g} for g in missing_groups])
        group_ids = dict(conn.execute(select(groups.c.name, groups.c.id)).all())

    now = utcnow()  # one import, one time
    ids = {name: before[name][0] for name in changed}
    if added:
        _insert_many(
            conn,
            hosts,
            ("name", *HOST_COLUMNS, "created_at", "updated_at"),
            [(n, *(wanted[n][c] for c in HOST_COLUMNS), now, now) for n in added],
        )
        ids.update(conn.execute(select(hosts.c.name, hosts.c.id).where(hosts.c.created_at == now)).all())
    if changed:
        conn.execute(
            update(hosts).where(hosts.c.id == bindparam("host_id")),
            [{"host_id": ids[n], "updated_at": now, **{c: wanted[n][c] for c in HOST_COLUMNS}} for n in changed],
        )
        doomed = [{"host_id": ids[n]} for n in changed]
        conn.execute(delete(host_groups).where(host_groups.c.host_id == bindparam("host_id")), doomed)
        conn.execute(delete(labels).where(labels.c.host_id == bindparam("host_id")), doomed)
    touched = added + changed
    _insert_many(
        conn,
        host_groups,
        ("host_id", "group_id"),
        [(ids[n], group_ids[g]) for n in touched for g in wanted[n]["groups"]],
    )
    _insert_many(
        conn,
        labels,
        ("host_id", "key", "value"),
        [(ids[n], k, v) for n in touched for k, v in wanted[n]["labels"].items()],
    )

    actor = events.default_actor()
    trail = [(now, actor, "host.added", ids[n], n, wanted[n]) for n in added]
    for n in changed:
        old, new = before[n][1], wanted[n]
        changes = {k: {"from": old[k], "to": new[k]} for k in new if old[k] != new[k]}
        trail.append((now, actor, "host.updated", ids[n], n, {"changes": changes}))
    trail += [(now, actor, "host.removed", before[n][0], n, {}) for n in removed]
    _insert_many(conn, _table(Event), ("at", "actor", "kind", "host_id", "host_name", "details"), trail)
    for start in range(0, len(removed), 5000):
        doomed_ids = [before[n][0] for n in removed[start : start + 5000]]
        conn.execute(delete(hosts).where(hosts.c.id.in_(doomed_ids)))
    return result


def _insert_many(conn: Any, table: Table, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """INSERT rows (tuples in `columns` order) in one executemany. On SQLite the rows go to the driver as they
    are, after each column type's own bind processing (JSON, UTC timestamps), since SQLAlchemy's per-row
    parameter handling costs more than SQLite's insert itself; other databases take the Core statement."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    # The dialect's own INSERT (qmark placeholders), its parameters in the order it names them.
    compiled = insert(table).compile(dialect=conn.dialect, column_keys=list(columns))
    order = [columns.index(key) for key in compiled.positiontup or ()]
    processors = [table.c[columns[i]].type.dialect_impl(conn.dialect).bind_processor(conn.dialect) for i in order]
    columns_of_rows = list(zip(*rows, strict=True))
    bound = []
    for i, process in zip(order, processors, strict=True):
        values = columns_of_rows[i]
        if process is None:
            bound.append(values)
        elif all(v is values[0] for v in values):  # one timestamp for a whole import: converted once
            bound.append((process(values[0]),) * len(values))
        else:
            bound.append(tuple(map(process, values)))
    rows = list(zip(*bound, strict=True))
    sql = str(compiled)
    conn.exec_driver_sql(sql, rows)


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


HOST_COLUMNS = ("address", "port", "user", "key_file", "vars")


def _desired(h: InventoryHost) -> dict[str, Any]:
    """A host as the database should hold it, in the shape _current_hosts reads it back."""
    return {
        "address": h.address,
        "port": h.port,
        "user": h.user,
        "key_file": h.key_file,
        "vars": h.vars,
        "groups": h.groups,  # both sorted by _to_inventory_host
        "labels": h.labels,
    }


def _current_hosts(conn: Any) -> dict[str, tuple[int, dict[str, Any]]]:
    """Every host as (id, the same shape as _desired), read in three queries."""
    hosts, groups = _table(Host), _table(Group)
    group_names: dict[int, list[str]] = defaultdict(list)
    for host_id, name in conn.execute(
        select(host_groups.c.host_id, groups.c.name).join(groups, groups.c.id == host_groups.c.group_id)
    ):
        group_names[host_id].append(name)
    labels: dict[int, dict[str, str]] = defaultdict(dict)
    for host_id, key, value in conn.execute(select(*_table(HostLabel).c["host_id", "key", "value"])):
        labels[host_id][key] = value
    out = {}
    for host_id, name, address, port, user, key_file, vars_ in conn.execute(
        select(*hosts.c["id", "name", "address", "port", "user", "key_file", "vars"])
    ):
        out[name] = (
            host_id,
            {
                "address": address,
                "port": port,
                "user": user,
                "key_file": key_file,
                "vars": vars_ or {},
                "groups": sorted(group_names.get(host_id, [])),
                "labels": dict(sorted(labels.get(host_id, {}).items())),
            },
        )
    return out
