"""`klpfleet demo`: everything klpfleet does, on a fleet and database of its own, under one directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from klpfleet.cli.output import console, info
from klpfleet.db.engine import open_database
from klpfleet.db.migrate import upgrade
from klpfleet.errors import UsageError

DEMO_MARKER = ".klpfleet-demo"
VERMAGIC = "6.1.0-56-amd64 SMP preempt mod_unload modversions "


def run_demo(directory: Path, *, fresh: bool, host_count: int) -> None:
    import os

    from klpfleet.fleet_status import fleet_status
    from klpfleet.inventory import apply_import, read_inventory
    from klpfleet.registry.patches import add_patch
    from klpfleet.sim.elfbuild import build_module

    if fresh and directory.exists():
        if not (directory / DEMO_MARKER).exists():
            raise UsageError(f"{directory} exists and is not a klpfleet demo directory: not removing it")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DEMO_MARKER).touch()
    os.environ["KLPFLEET_ARTIFACTS"] = str(directory / "artifacts")

    db = open_database(str(directory / "klpfleet.db"), create=True)
    upgrade(db)
    info(f"database: {db.display_url()}")

    inventory = directory / "inventory.yml"
    width = len(str(host_count))
    lines = ["all:", "  hosts:"]
    for i in range(1, host_count + 1):
        lines.append(f"    sim-{i:0{width}d}: {{zone: {'abc'[(i - 1) % 3]}}}")
    inventory.write_text("\n".join(lines) + "\n")
    found = read_inventory([str(inventory)])
    with db.session.begin() as session:
        counts = apply_import(session, found, prune=True).counts()
    info(f"inventory {inventory}: {counts}")

    ko = directory / "livepatch_cve_2026_1234.ko"
    ko.write_bytes(
        build_module(
            [
                ("name", "livepatch_cve_2026_1234"),
                ("vermagic", VERMAGIC),
                ("livepatch", "Y"),
                ("srcversion", "D3M0D3M0D3M0D3M0D3M0D3M"),
            ]
        )
    )
    with db.session.begin() as session:
        patch, created = add_patch(session, ko, description="demo CVE fix", cves=["CVE-2026-1234"])
        info(f"patch {patch.name} {patch.sha256[:12]} {'registered' if created else 'already registered'}")

    from klpfleet.cli.status_cmds import _status_table

    with db.engine.connect() as conn:
        _status_table(fleet_status(conn), console())
    info(f"\nnext: klpfleet --db {directory / 'klpfleet.db'} hosts --label zone=a")
