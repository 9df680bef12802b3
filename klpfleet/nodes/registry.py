"""Execution nodes in the database: add, list, remove, and the plain records the rest of the code uses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from klpfleet.db import events
from klpfleet.db.engine import Database
from klpfleet.db.models import ExecutionNode
from klpfleet.db.types import utcnow
from klpfleet.errors import UsageError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SSH_TARGET = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]*)@)?"
    r"(?P<host>[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?$"
)
LABEL = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_.-]{0,63})=(?P<value>[^\s]{1,255})$")


@dataclass(frozen=True)
class Node:
    name: str
    user: str
    host: str
    port: int = 22
    key_file: str | None = None
    known_hosts: str | None = None
    runner: str = "ansible-runner"
    serves_label: str | None = None
    serves_value: str | None = None
    keepalive_seconds: int = 5
    silent_after_seconds: int = 60
    capacity: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    checked_at: datetime | None = field(default=None, compare=False, hash=False)

    @classmethod
    def from_row(cls, row: ExecutionNode) -> Node:
        return cls(
            name=row.name,
            user=row.ssh_user,
            host=row.ssh_host,
            port=row.ssh_port,
            key_file=row.key_file,
            known_hosts=row.known_hosts,
            runner=row.runner,
            serves_label=row.serves_label,
            serves_value=row.serves_value,
            keepalive_seconds=row.keepalive_seconds,
            silent_after_seconds=row.silent_after_seconds,
            capacity=dict(row.capacity or {}),
            checked_at=row.checked_at,
        )

    @property
    def serves(self) -> str | None:
        return f"{self.serves_label}={self.serves_value}" if self.serves_label else None

    @property
    def ssh(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ssh": self.ssh,
            "key_file": self.key_file,
            "known_hosts": self.known_hosts,
            "runner": self.runner,
            "serves": self.serves,
            "keepalive_seconds": self.keepalive_seconds,
            "silent_after_seconds": self.silent_after_seconds,
            "capacity": self.capacity,
            "checked_at": self.checked_at,
        }


def parse_ssh(text: str, default_user: str) -> tuple[str, str, int]:
    """`user@host[:port]` (an IPv6 address in brackets) -> (user, host, port)."""
    m = SSH_TARGET.match(text.strip())
    port = int(m["port"]) if m and m["port"] else 22
    if not m or not 0 < port < 65536:
        raise UsageError(f"--ssh {text!r}: expected user@host[:port]")
    return m["user"] or default_user, m["host"].strip("[]"), port


def parse_serves(text: str | None) -> tuple[str | None, str | None]:
    """`zone=eu-1` -> ("zone", "eu-1"); None: the node serves hosts no labelled node serves."""
    if text is None:
        return None, None
    m = LABEL.match(text.strip())
    if not m:
        raise UsageError(f"--serves {text!r}: expected LABEL=VALUE, e.g. zone=eu-1")
    return m["key"], m["value"]


def nodes(db: Database) -> list[Node]:
    with db.session() as s:
        return [Node.from_row(r) for r in s.scalars(select(ExecutionNode).order_by(ExecutionNode.name))]


def get(db: Database, name: str) -> Node:
    with db.session() as s:
        row = s.scalar(select(ExecutionNode).where(ExecutionNode.name == name))
        if row is None:
            known = ", ".join(n.name for n in nodes(db)) or "none"
            raise UsageError(f"no execution node named {name!r} (known: {known})")
        return Node.from_row(row)


def add(db: Database, node: Node, actor: str) -> None:
    if not NAME.match(node.name):
        raise UsageError(f"node name {node.name!r}: letters, digits, '.', '_' and '-' only, 64 at most")
    with db.session.begin() as s:
        if s.scalar(select(ExecutionNode.id).where(ExecutionNode.name == node.name)) is not None:
            raise UsageError(f"an execution node named {node.name!r} exists (node remove it first)")
        s.add(
            ExecutionNode(
                name=node.name,
                ssh_user=node.user,
                ssh_host=node.host,
                ssh_port=node.port,
                key_file=node.key_file,
                known_hosts=node.known_hosts,
                runner=node.runner,
                serves_label=node.serves_label,
                serves_value=node.serves_value,
                keepalive_seconds=node.keepalive_seconds,
                silent_after_seconds=node.silent_after_seconds,
                capacity=node.capacity,
                checked_at=node.checked_at,
                added_by=actor,
            )
        )
        events.add(s, "node.added", actor=actor, node=node.name, ssh=node.ssh, serves=node.serves)


def save_check(db: Database, name: str, capacity: dict[str, Any]) -> None:
    with db.session.begin() as s:
        row = s.scalar(select(ExecutionNode).where(ExecutionNode.name == name))
        if row is not None:
            row.capacity, row.checked_at = capacity, utcnow()


def remove(db: Database, name: str, actor: str) -> None:
    get(db, name)
    with db.session.begin() as s:
        row = s.scalar(select(ExecutionNode).where(ExecutionNode.name == name))
        if row is not None:
            s.delete(row)
            events.add(s, "node.removed", actor=actor, node=name)
