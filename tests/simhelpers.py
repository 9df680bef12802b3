"""Helpers for tests that drive simulated hosts through the shared host code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost, SimPrimitives
from klpfleet.sim.fleet import create_host
from klpfleet.sim.spec import normalize, write_ko

RELEASE = "6.1.0-56-amd64"


def sim_host(root: Path, release: str = RELEASE, **faults: Any) -> SimPrimitives:
    create_host(root, release, speed=0.0, faults=faults)
    return SimPrimitives(str(root))


def build(tmp: Path, name: str, release: str = RELEASE, **spec: Any) -> str:
    spec.setdefault("objects", [{"name": "vmlinux", "funcs": [f"{name}_func"]}])
    return str(write_ko(normalize({"name": name, "kernel_release": release, **spec}), tmp / f"{name}.ko"))


def kernel_state(prims: SimPrimitives) -> dict[str, Any]:
    with SimHost(prims.root) as k:
        return k.s
