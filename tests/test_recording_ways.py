"""Every way an Ansible user can produce a module result (loops, handlers, async, delegation, ad-hoc runs, the
controller's own runs) is recorded, and recorded the same way by the callback and by the controller."""

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from klpfleet.db.engine import open_database
from klpfleet.db.migrate import upgrade
from klpfleet.db.models import AnsibleRun, Host, HostPatch
from klpfleet.inventory.importer import apply_import
from klpfleet.inventory.sources import read_inventory
from klpfleet.registry.patches import add_patch
from klpfleet.sim.fleet import create_fleet
from klpfleet.sim.spec import normalize, write_ko

from .ansiblehelpers import BIN, ROOT, ansible_env, playbook

pytestmark = pytest.mark.ansible


WAYS_FAULTS = {"sim-02": {"refuse": {"patch": "lp_b", "object": "vmlinux", "errno": "ENODEV"}}}
WAYS_EXPECTED = {
    ("sim-01", "lp_a"): "applied",
    ("sim-01", "lp_b"): "applied",
    ("sim-02", "lp_a"): "applied",
    ("sim-02", "lp_b"): "refused",
    ("sim-03", "lp_a"): "applied",
    ("sim-04", "lp_a"): "applied",
}


def ways_fleet(tmp: Path, url: str):
    """Five simulated hosts nothing has read yet, two patches registered."""
    create_fleet(tmp / "fleet", {"hosts": 5, "faults": WAYS_FAULTS, "speed": 0})
    db = open_database(url, create=True)
    upgrade(db)
    kos = {}
    with db.session.begin() as s:
        apply_import(s, read_inventory([str(tmp / "fleet" / "inventory.yml")]), prune=False)
        for name in ("lp_a", "lp_b"):
            spec = {"name": name, "objects": [{"name": "vmlinux", "funcs": [f"{name}_func"]}]}
            kos[name] = write_ko(normalize(spec), tmp / f"{name}.ko")
            add_patch(s, kos[name])
    return db, kos


def recorded(db):
    from klpfleet.db.models import Patch

    with db.session() as s:
        rows = s.execute(
            select(Host.name, Patch.name, HostPatch.state)
            .join(HostPatch, HostPatch.host_id == Host.id)
            .join(Patch, Patch.id == HostPatch.patch_id)
        ).all()
        releases = dict(s.execute(select(Host.name, Host.kernel_release)).all())
        runs = [r.status for r in s.scalars(select(AnsibleRun))]
    return {(h, p): st for h, p, st in rows}, releases, runs


@pytest.mark.parametrize("strategy,forks", [("linear", 5), ("free", 1), ("host_pinned", 3)])
def test_every_way_a_result_arrives_is_recorded(tmp_path, sqlite_url, monkeypatch, strategy, forks):
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    db, kos = ways_fleet(tmp_path, sqlite_url)
    proc = playbook(
        tmp_path / "fleet" / "inventory.yml",
        ROOT / "tests" / "playbooks" / "ways.yml",
        "-e",
        f"ko_a={kos['lp_a']}",
        "-e",
        f"ko_b={kos['lp_b']}",
        "--forks",
        str(forks),
        db_url=sqlite_url,
        env={"ANSIBLE_STRATEGY": strategy},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    states_, releases, runs = recorded(db)
    assert states_ == WAYS_EXPECTED
    assert releases["sim-05"] == "6.1.0-56-amd64"  # only ever read through async_status
    assert runs == ["completed"]


def test_the_controller_records_what_the_callback_records(tmp_path, monkeypatch):
    """The same playbook through ansible-runner (the controller's event stream) and through
    ansible-playbook (the callback) gives the same database."""
    from klpfleet.controller.playbook import run_playbook
    from klpfleet.inventory.export import fleet_inventory
    from klpfleet.runs.engine import resolve as resolve_engine
    from klpfleet.runs.types import RunRequest

    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    results = {}
    for how in ("callback", "controller"):
        home = tmp_path / how
        home.mkdir()
        url = f"sqlite:///{home / 'k.db'}"
        db, kos = ways_fleet(home, url)
        extravars = {"ko_a": str(kos["lp_a"]), "ko_b": str(kos["lp_b"])}
        if how == "callback":
            args = [a for k, v in extravars.items() for a in ("-e", f"{k}={v}")]
            proc = playbook(
                home / "fleet" / "inventory.yml", ROOT / "tests" / "playbooks" / "ways.yml", *args, db_url=url
            )
            assert proc.returncode == 0, proc.stdout[-3000:]
        else:
            run = run_playbook(
                RunRequest(
                    db=db,
                    playbook=str(ROOT / "tests" / "playbooks" / "ways.yml"),
                    records=fleet_inventory(db),
                    extravars=extravars,
                    runs_in=home / "runs",
                    ident="ways",
                    forks=5,
                    # ways.yml runs a task with async, which Mitogen's strategy cannot (tests/test_engine.py).
                    engine=resolve_engine("ansible"),
                )
            )
            assert run.status == "successful", run.rc
        results[how] = recorded(db)
    assert results["callback"] == results["controller"]
    assert results["controller"][0] == WAYS_EXPECTED


def test_ad_hoc_runs_are_recorded(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    db, kos = ways_fleet(tmp_path, sqlite_url)
    proc = subprocess.run(
        [
            str(BIN / "ansible"),
            "-i",
            str(tmp_path / "fleet" / "inventory.yml"),
            "sim-01:sim-02:sim-03",
            "-m",
            "klpfleet.livepatch.patch",
            "-a",
            f"src={kos['lp_b']} transition_timeout=5",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ansible_env(sqlite_url),
        check=False,
    )
    assert proc.returncode == 2, proc.stdout[-2000:]  # sim-02 refuses lp_b
    states_, releases, runs = recorded(db)
    assert states_ == {("sim-01", "lp_b"): "applied", ("sim-02", "lp_b"): "refused", ("sim-03", "lp_b"): "applied"}
    assert releases["sim-01"] == "6.1.0-56-amd64" and releases["sim-04"] is None
    assert runs == ["failed"]
