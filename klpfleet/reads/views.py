"""Read models: the records the read commands print. Plain dicts and lists, no rendering here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, selectinload

from klpfleet.db.models import Event, Group, Host, HostLabel, HostPatch, Patch, Rollout, host_groups
from klpfleet.errors import UsageError
from klpfleet.inventory.export import host_details
from klpfleet.reads.function_map import function_rows, host_stacks
from klpfleet.reads.reboot_debt import reboot_debt
from klpfleet.registry.blocks import describe_block
from klpfleet.registry.klp_contents import stored_contents
from klpfleet.registry.module_signature import stored_signature
from klpfleet.registry.patches import get_patch
from klpfleet.states import PatchState


def list_hosts(
    session: Session,
    *,
    state: str | None = None,
    patch: str | None = None,
    group: str | None = None,
    label: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    if state is not None and state not in {s.value for s in PatchState}:
        raise UsageError(f"unknown state {state!r}; one of: {', '.join(s.value for s in PatchState)}")
    # Columns, not ORM entities: a listing of tens of thousands of hosts needs no identity map.
    query = select(Host.id, Host.name, Host.address, Host.kernel_release, Host.reachable, Host.last_seen).order_by(
        Host.name
    )
    patch_row = get_patch(session, patch) if patch else None
    if state or patch_row:
        conditions = [HostPatch.host_id == Host.id]
        if state:
            conditions.append(HostPatch.state == state)
        if patch_row:
            conditions.append(HostPatch.patch_id == patch_row.id)
        query = query.where(select(HostPatch.id).where(and_(*conditions)).exists())
    if group:
        group_row = session.scalar(select(Group).where(Group.name == group))
        if group_row is None:
            raise UsageError(f"no group {group!r}")
        query = query.where(
            select(host_groups.c.host_id)
            .where(host_groups.c.host_id == Host.id, host_groups.c.group_id == group_row.id)
            .exists()
        )
    if label:
        key, value = label
        query = query.where(
            select(HostLabel.host_id)
            .where(HostLabel.host_id == Host.id, HostLabel.key == key, HostLabel.value == value)
            .exists()
        )
    hosts = session.execute(query).all()
    labels, _, per_host = host_details(session.connection(), [h.id for h in hosts])
    return [
        {
            "name": h.name,
            "address": h.address,
            "kernel_release": h.kernel_release,
            "reachable": h.reachable,
            "labels": labels.get(h.id, {}),
            "patches": per_host.get(h.id, {}),
            "last_seen": h.last_seen,
        }
        for h in hosts
    ]


def get_host(session: Session, name: str) -> Host:
    host = session.scalar(
        select(Host).where(Host.name == name).options(selectinload(Host.groups), selectinload(Host.labels))
    )
    if host is None:
        raise UsageError(f"no host {name!r} (see `klpfleet hosts`)")
    return host


def host_detail(session: Session, name: str, event_limit: int = 20) -> dict[str, Any]:
    host = get_host(session, name)
    states = session.execute(
        select(HostPatch, Patch)
        .join(Patch, Patch.id == HostPatch.patch_id)
        .where(HostPatch.host_id == host.id)
        .order_by(HostPatch.stack_order.is_(None), HostPatch.stack_order, Patch.name)
    ).all()
    recent = session.scalars(
        select(Event).where(Event.host_id == host.id).order_by(Event.at.desc(), Event.id.desc()).limit(event_limit)
    )
    return {
        "name": host.name,
        "address": host.address,
        "port": host.port,
        "user": host.user,
        "kernel_release": host.kernel_release,
        "livepatch_supported": host.livepatch_supported,
        "reachable": host.reachable,
        "last_seen": host.last_seen,
        "boot_id": host.boot_id,
        "booted_at": host.booted_at,
        "groups": sorted(g.name for g in host.groups),
        "labels": {lb.key: lb.value for lb in host.labels},
        "vars": host.vars,
        "patches": [
            {
                "patch": p.name,
                "sha256": p.sha256,
                "state": hp.state,
                "enabled": hp.enabled,
                "transition": hp.transition,
                "stack_order": hp.stack_order,
                "replace": hp.replace,
                "objects": hp.objects,
                "last_outcome": hp.last_outcome,
                "error_code": hp.error_code,
                "errno": hp.errno,
                "refused_object": hp.refused_object,
                "stalled_tasks": hp.stalled_tasks,
                "attempts": hp.attempts,
                "observed_at": hp.observed_at,
                "observed_by": hp.observed_by,
            }
            for hp, p in states
        ],
        "events": [event_record(e) for e in recent],
        "module_signatures": host.module_signatures,
        # Which patch's code runs for each patched function, and what only a reboot clears.
        "functions": function_rows(host_stacks(session, [host.name])),
        "reboot_required": next(
            (h["reasons"] for h in reboot_debt(session.connection()) if h["host"] == host.name), []
        ),
    }


def event_record(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at,
        "actor": e.actor,
        "kind": e.kind,
        "host": e.host_name,
        "patch": e.patch_name,
        "rollout": e.rollout_id,
        "details": e.details,
    }


def patch_record(session: Session, p: Patch, *, with_states: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": p.name,
        "sha256": p.sha256,
        "srcversion": p.srcversion,
        "kernel_release": p.kernel_release,
        "vermagic": p.vermagic,
        "depends": p.depends,
        "size": p.size,
        "description": p.description,
        "cves": p.cves,
        "path": p.path,
        "source_path": p.source_path,
        "added_at": p.added_at,
        "blocked": describe_block(p),  # None, or when, by whom and why (`klpfleet patch block`)
    }
    if with_states:
        record["signed"] = p.signed
        record["signature"] = stored_signature(p.signature)
        record["contents"] = stored_contents(p.contents)  # a forged or damaged row shows as not read
        record["states"] = dict(
            session.execute(
                select(HostPatch.state, func.count()).where(HostPatch.patch_id == p.id).group_by(HostPatch.state)
            ).all()
        )
        record["rollouts"] = [
            {"id": r.id, "status": r.status, "created_at": r.created_at}
            for r in session.scalars(select(Rollout).where(Rollout.patch_id == p.id).order_by(Rollout.id))
        ]
    return record


def list_patches(session: Session) -> list[dict[str, Any]]:
    applied = dict(
        session.execute(
            select(HostPatch.patch_id, func.count())
            .where(HostPatch.state == PatchState.APPLIED.value)
            .group_by(HostPatch.patch_id)
        ).all()
    )
    rows = []
    for p in session.scalars(select(Patch).order_by(Patch.name, Patch.added_at)):
        record = patch_record(session, p)
        record["applied_hosts"] = applied.get(p.id, 0)
        rows.append(record)
    return rows
