"""Simulated fleets registered in a database, ready for rollouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from klpfleet.controller.playbook import run_playbook
from klpfleet.db.engine import Database, open_database
from klpfleet.db.migrate import upgrade
from klpfleet.db.models import Patch
from klpfleet.inventory.export import fleet_inventory
from klpfleet.inventory.importer import apply_import
from klpfleet.inventory.sources import read_inventory
from klpfleet.registry.patches import add_patch
from klpfleet.runs.types import RunRequest
from klpfleet.sim.fleet import create_fleet
from klpfleet.sim.spec import normalize, write_ko


def fleet_db(
    tmp: Path,
    db_url: str,
    hosts: int = 6,
    faults: dict[str, Any] | None = None,
    labels: dict[str, list[str]] | None = None,
    gather: bool = True,
    kernel_release: str | None = None,
) -> Database:
    spec: dict[str, Any] = {"hosts": hosts, "labels": labels or {"zone": ["a", "b", "c"]}, "faults": faults or {}}
    create_fleet(tmp / "fleet", {**spec, "speed": 0, **({"kernel_release": kernel_release} if kernel_release else {})})
    db = open_database(db_url, create=True)
    upgrade(db)
    with db.session.begin() as s:
        apply_import(s, read_inventory([str(tmp / "fleet" / "inventory.yml")]), prune=False)
    if gather:
        gather_fleet(db, tmp)
    return db


def gather_fleet(db: Database, tmp: Path, ident: str = "gather") -> None:
    """playbooks/gather.yml over the whole fleet, recorded."""
    run_playbook(
        RunRequest(
            db=db,
            playbook="gather.yml",
            records=fleet_inventory(db),
            extravars={},
            runs_in=tmp / "runs",
            ident=ident,
            forks=20,
        )
    )


def register(db: Database, tmp: Path, name: str = "livepatch_cve_2026_1234", **spec: Any) -> Patch:
    spec.setdefault("objects", [{"name": "vmlinux", "funcs": ["tcp_send_challenge_ack"]}])
    ko = write_ko(normalize({"name": name, **spec}), tmp / f"{name}.ko")
    with db.session.begin() as s:
        patch, _ = add_patch(s, ko)
        return patch


def sim_root(tmp: Path, host: str) -> str:
    return str(tmp / "fleet" / "hosts" / host)


def enabled_on(tmp: Path, host: str) -> list[str]:
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import Livepatch
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import primitives_for

    return [p["name"] for p in Livepatch(primitives_for("sim", sim_root(tmp, host))).patches()]


def enable_count(tmp: Path, host: str, patch: str) -> int:
    """How many times the host's kernel was asked to enable the patch (from its kernel log)."""
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost

    with SimHost(sim_root(tmp, host)) as k:
        return sum(1 for _, _, text in k.s["log"] if text == f"livepatch: enabling patch '{patch}'")


def kernel_modules(tmp: Path, host: str) -> list[str]:
    """Every module loaded on the simulated host (a freed patch's module stays until rmmod)."""
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost

    with SimHost(sim_root(tmp, host)) as k:
        return sorted(k.s["modules"])
