"""The function map: for each function a host's loaded patches replace, which patches list it, top of the stack
first, and so which one's code runs.

A host's functions are what its sysfs listed at the last gather or probe (`<function>,<sympos>` directories);
for a patch gathered before klpfleet read them, what the patch's .ko says it patches. The stack order is the
kernel's own `stack_order` from 6.13, else the order the host's modules were loaded in as a gather read it, else
(a host whose whole order was never reported) the order klpfleet's own loads happened in.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from klpfleet.db.models import Event, Host, HostPatch, Patch
from klpfleet.names import sysfs_functions
from klpfleet.registry.klp_contents import stored_contents
from klpfleet.states import PatchState

# Enabled patches: their functions are hooked (a transitioning one for some tasks already).
IN_EFFECT = (PatchState.APPLIED.value, PatchState.FORCED.value, PatchState.TRANSITIONING.value)
STACK_ORDER_SINCE = (6, 13)


def release_numbers(release: str | None) -> tuple[int, int]:
    head = (release or "").split("-")[0].split("+")[0].split(".")
    try:
        return int(head[0]), int(head[1])
    except (ValueError, IndexError):
        return (0, 0)


def stack_order_source(release: str | None) -> str:
    return "sysfs" if release_numbers(release) >= STACK_ORDER_SINCE else "module_load_order"


def patch_functions(patch: Patch) -> dict[str, list[str]]:
    """What a patch's .ko says it patches, named as sysfs names the directories (sympos 0 shows as 1)."""
    objects = (stored_contents(patch.contents) or {}).get("objects") or {}
    return {
        str(obj): sorted(f"{f['function']},{max(1, int(f.get('sympos') or 0))}" for f in funcs or [])
        for obj, funcs in objects.items()
    }


def host_stacks(session: Session, host_names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """host -> {kernel_release, stack_order_source, functions: {(object, "func,sympos"): [patch, ...] top first},
    sources: {patch: "sysfs"|"module"}}: every enabled patch on the host."""
    rows = {p.id: p for p in session.scalars(select(Patch))}
    known = {pid: patch_functions(p) for pid, p in rows.items()}
    query = (
        select(
            Host.name,
            Host.kernel_release,
            HostPatch.patch_id,
            HostPatch.stack_order,
            # As text: the hosts of a patch list the same functions, so each distinct list is parsed once.
            cast(HostPatch.functions, Text),
        )
        .join(HostPatch, HostPatch.host_id == Host.id)
        .where(
            HostPatch.state.in_(IN_EFFECT)
            | ((HostPatch.state == PatchState.DRIFT.value) & HostPatch.enabled.is_(True))  # found loaded anyway
        )
    )
    if host_names is not None:
        query = query.where(Host.name.in_(sorted(host_names)))
    per_host: dict[str, list[tuple[int | None, str, dict[str, list[str]], str]]] = defaultdict(list)
    releases: dict[str, str | None] = {}
    parsed: dict[str, dict[str, list[str]]] = {}
    for host, release, patch_id, order, raw in session.execute(query).all():
        releases[host] = release
        if raw not in parsed:
            parsed[raw] = sysfs_functions(_json(raw))
        listed = parsed[raw]
        per_host[host].append((order, rows[patch_id].name, listed or known[patch_id], "sysfs" if listed else "module"))
    loaded = load_order(session, [h for h, patches in per_host.items() if not _ordered(patches)])
    out: dict[str, dict[str, Any]] = {}
    for host, patches in per_host.items():
        if _ordered(patches):
            ranked = sorted(patches, key=lambda p: -(p[0] or 0))
            source = stack_order_source(releases[host])
        else:
            # An order the host never reported in full (a load records only its own patch's position before
            # 6.13): the order klpfleet loaded them in, from its events; patches it never loaded go last.
            mine = loaded.get(host, {})
            ranked = sorted(
                patches, key=lambda p: (p[1] not in mine, tuple(-x for x in mine.get(p[1], (0.0, 0))), p[1])
            )
            source = "klpfleet_load_order"
        stacks: dict[tuple[str, str], list[str]] = defaultdict(list)
        for _order, name, functions, _source in ranked:
            for obj, funcs in functions.items():
                for func in funcs:
                    stacks[(obj, func)].append(name)
        out[host] = {
            "kernel_release": releases[host],
            "stack_order_source": source,
            "functions": dict(stacks),
            "sources": {name: fsource for _o, name, _f, fsource in patches},
        }
    return out


def _ordered(patches: list[tuple[int | None, str, Any, str]]) -> bool:
    orders = [p[0] for p in patches]
    return None not in orders and len(set(orders)) == len(orders)


def load_order(session: Session, hosts: list[str]) -> dict[str, dict[str, tuple[float, int]]]:
    """host -> patch -> when klpfleet last loaded it there (an `applied` load's event), as a timestamp."""
    if not hosts:
        return {}
    query = select(Event.host_name, Event.patch_name, Event.at, Event.id).where(
        Event.kind == "patch.state",
        Event.host_name.in_(sorted(hosts)),
        Event.details["outcome"].as_string() == "applied",
    )
    out: dict[str, dict[str, tuple[float, int]]] = defaultdict(dict)
    for host, patch, at, event_id in session.execute(query).all():
        if host is not None and patch is not None:
            stamp = (at.timestamp(), event_id)  # the event id breaks ties within one clock tick
            out[host][patch] = max(stamp, out[host].get(patch, stamp))
    return out


def function_rows(stacks: dict[str, dict[str, Any]], function: str | None = None) -> list[dict[str, Any]]:
    """One row per host and function (for one host), or per function and stack fleet-wide with a host count."""
    rows: list[dict[str, Any]] = []
    for host, stack in sorted(stacks.items()):
        for (obj, func), patches in sorted(stack["functions"].items()):
            name, _, sympos = func.partition(",")
            if function is not None and name != function:
                continue
            rows.append(
                {
                    "host": host,
                    "object": obj,
                    "function": name,
                    "sympos": int(sympos),
                    "patches": patches,
                    "in_effect": patches[0],
                    "stacked": len(patches) > 1,
                    "stack_order_source": stack["stack_order_source"],
                    "functions_source": ",".join(sorted({stack["sources"][p] for p in patches})),
                }
            )
    return rows


def fleet_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same functions across the fleet: one row per (object, function, stack), with how many hosts."""
    grouped: dict[tuple[str, str, int, tuple[str, ...]], list[str]] = defaultdict(list)
    for r in rows:
        grouped[(r["object"], r["function"], r["sympos"], tuple(r["patches"]))].append(r["host"])
    return [
        {
            "object": obj,
            "function": func,
            "sympos": sympos,
            "patches": list(patches),
            "in_effect": patches[0],
            "stacked": len(patches) > 1,
            "hosts": len(hosts),
            "example_hosts": sorted(hosts)[:5],
        }
        for (obj, func, sympos, patches), hosts in sorted(grouped.items())
    ]


def _json(raw: str | None) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
