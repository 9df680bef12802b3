"""Choosing hosts with Ansible's own host-pattern language (globs, `:` unions, `!` exclusions, `&`
intersections, groups), evaluated by ansible-core over an inventory built from the database."""

from __future__ import annotations

import os

from klpfleet.db.engine import Database
from klpfleet.errors import UsageError


def select_hosts(db: Database, pattern: str | None = None, group: str | None = None) -> list[str]:
    from klpfleet.inventory.export import fleet_inventory, group_name

    hosts = fleet_inventory(db)
    if pattern is None and group is None:
        return [h["name"] for h in hosts]
    os.environ.setdefault("ANSIBLE_LOCALHOST_WARNING", "False")
    os.environ.setdefault("ANSIBLE_INVENTORY_UNPARSED_WARNING", "False")
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    manager = InventoryManager(loader=DataLoader(), sources=[])
    data = manager._inventory
    for h in hosts:
        data.add_host(h["name"])
        for g in h["groups"]:
            data.add_group(g)
            data.add_child(g, h["name"])
        for key, value in h["labels"].items():
            name = group_name(f"{key}_{value}")
            data.add_group(name)
            data.add_child(name, h["name"])
    data.reconcile_inventory()
    if pattern is not None:
        check_pattern(pattern)
    if group is not None:
        if group not in data.groups:
            raise UsageError(f"no group {group!r} (see `klpfleet hosts`)")
        pattern = group if pattern is None else f"{group}:&{pattern}"
    from klpfleet.inventory.ansible_vars import captured_ansible_warnings

    try:
        with captured_ansible_warnings() as warnings:
            matched = [h.name for h in manager.get_hosts(pattern=pattern)]
    except AnsibleError as exc:
        raise UsageError(f"host pattern {pattern!r}: {' '.join(str(exc).split())}") from None
    if not matched:
        hint = f" ({warnings[0]})" if warnings else ""
        raise UsageError(f"host pattern {pattern!r} matches no host{hint}")
    return sorted(matched)


def check_pattern(pattern: str) -> None:
    """Refuse a pattern ansible-core would read as something else: one that splits into nothing (`[`, `]`, ` `)
    means `all` to it, and an unclosed bracket is dropped without a word (`web1[` selects web1)."""
    from ansible.inventory.manager import split_host_pattern

    if pattern.count("[") != pattern.count("]") or not split_host_pattern(pattern):
        raise UsageError(f"host pattern {pattern!r} is not a host pattern (unbalanced brackets, or nothing to match)")
