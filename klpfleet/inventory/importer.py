"""Making the database's hosts, groups and labels what the inventory sources say: one transaction, bulk
statements, an event per host added, changed or removed."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from klpfleet.db import events, locks
from klpfleet.db.models import Event, Group, Host, HostLabel, host_groups
from klpfleet.db.types import utcnow
from klpfleet.errors import UsageError
from klpfleet.inventory.sources import InventoryHost


@dataclass
class ImportResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("added", "updated", "unchanged", "removed")}


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
