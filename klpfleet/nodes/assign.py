"""Which execution node runs which host: the node serving the host's label, else the unlabelled nodes.

Among several candidates a host goes to one by weighted rendezvous hashing (weight: the node's CPU count from
its last check): the same host goes to the same node run after run, so a host left in flight is re-read by
the node that touched it, and adding or removing a node moves only the hosts it gains or loses."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from klpfleet.nodes.registry import Node

MAX_WEIGHT = 4096.0  # what the database says of a node is bounded too (a row can be edited)


def weight(node: Node) -> float:
    cpus = node.capacity.get("cpu_count")
    if isinstance(cpus, bool) or not isinstance(cpus, int | float) or not 0 < cpus <= MAX_WEIGHT:
        return 1.0
    return float(cpus)


def _score(host: str, node: Node) -> float:
    digest = hashlib.sha256(f"{host}\0{node.name}".encode()).digest()
    uniform = (int.from_bytes(digest[:8], "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -weight(node) / math.log(uniform)


def candidates(labels: dict[str, str], nodes: list[Node]) -> list[Node]:
    labelled = [n for n in nodes if n.serves_label and labels.get(n.serves_label) == n.serves_value]
    return labelled or [n for n in nodes if not n.serves_label]


def assign(
    records: list[dict[str, Any]], nodes: list[Node]
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """(node name -> its hosts' records, records no node serves)."""
    shares: dict[str, list[dict[str, Any]]] = {}
    unserved: list[dict[str, Any]] = []
    for record in records:
        found = candidates(record.get("labels") or {}, nodes)
        if not found:
            unserved.append(record)
            continue
        best = max(found, key=lambda n: _score(record["name"], n))
        shares.setdefault(best.name, []).append(record)
    return shares, unserved
