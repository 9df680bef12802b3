"""Hostile hosts, rows and files: directories others own where klpfleet runs as root, a run's environment, rows
that do not decode, states klpfleet never writes, a damaged simulated host, a node's claims, delegation."""

from __future__ import annotations

import json
import os

import pytest
from sqlalchemy import select, text

from klpfleet.db.models import Host, HostPatch
from klpfleet.hoststate.recorder import Recorder

from .conftest import ROOT, run_klpfleet
from .controllerhelpers import fleet_db

PATCH = "livepatch_cve_2026_1234"


# ------------------------------------------------------------------ F13b, B1, B2: directories that run as root


def _other_user() -> int:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    return 65534  # nobody


def test_a_remote_dir_another_user_owns_is_refused(tmp_path):
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._artifact import install
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import LivepatchError

    nobody = _other_user()
    owned = tmp_path / "owned"
    owned.mkdir(mode=0o755)
    os.chown(owned, nobody, nobody)
    with pytest.raises(LivepatchError, match="only this user"):
        install(b"\x7fELF", str(owned), "0" * 64)
    parent = tmp_path / "parent"
    parent.mkdir(mode=0o755)
    os.chown(parent, nobody, nobody)  # below a directory another user can rename things in
    with pytest.raises(LivepatchError, match="neither root nor this user"):
        install(b"\x7fELF", str(parent / "patches"), "0" * 64)
    writable = tmp_path / "writable"
    writable.mkdir()
    os.chmod(writable, 0o777)  # without the sticky bit
    with pytest.raises(LivepatchError, match="can be written by other users"):
        install(b"\x7fELF", str(writable / "patches"), "0" * 64)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)  # like /tmp: fine above us
    path, written = install(b"\x7fELF", str(sticky / "patches"), "a" * 64)
    assert written and os.stat(os.path.dirname(path)).st_uid == os.geteuid()


@pytest.mark.parametrize("how", ["owner", "mode", "manifest"])
def test_the_boot_loader_loads_nothing_from_a_directory_others_can_change(tmp_path, capsys, how):
    """After a patch was kept, its boot directory is given away or opened up: the loader refuses it at the next
    boot (it loads as root what the manifest names) and says why; nothing is loaded."""
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost
    from ansible_collections.klpfleet.livepatch.plugins.modules import patch as patch_module
    from klpfleet.sim.fleet import reboot_host

    from .simhelpers import RELEASE, build, sim_host
    from .test_collection_modules import run_module

    nobody = _other_user()
    host = tmp_path / "host"
    sim_host(host)
    ko = build(tmp_path, "lp_kept")
    assert run_module(patch_module, capsys, backend="sim", sim_root=str(host), src=ko)["persisted"]
    release_dir = host / "boot" / RELEASE
    if how == "owner":
        os.chown(release_dir, nobody, nobody)
    elif how == "mode":
        os.chmod(release_dir, 0o777)
    else:
        os.chmod(release_dir / "manifest.json", 0o666)
    status = reboot_host(host)
    assert status["results"] == [] and "error" in status, status
    with SimHost(str(host)) as k:
        assert [p["name"] for p in k.s["patches"]] == []
        assert any("klpfleet-boot: cannot read the manifest" in text for _, _, text in k.s["log"])


# ------------------------------------------------------------------ the low items


@pytest.mark.ansible
def test_a_run_never_sees_the_controllers_database_password(tmp_path, sqlite_url, monkeypatch):
    from klpfleet.controller.playbook import run_playbook
    from klpfleet.inventory.export import fleet_inventory
    from klpfleet.runs.engine import resolve
    from klpfleet.runs.types import RunRequest

    monkeypatch.setenv("PGPASSWORD", "sekrit-5531")
    db = fleet_db(tmp_path, sqlite_url, hosts=1, gather=False)
    run = run_playbook(
        RunRequest(
            db=db,
            playbook=str(ROOT / "tests" / "playbooks" / "echo_env.yml"),
            records=fleet_inventory(db),
            extravars={"probe_out": str(tmp_path / "env")},
            runs_in=tmp_path / "runs",
            ident="env",
            forks=1,
            engine=resolve("ansible"),
        )
    )
    assert run.status == "successful"
    assert (tmp_path / "env-sim-01").read_text() == "[]"


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        ("UPDATE hosts SET vars = '{broken'", ["host", "web1"]),
        ("UPDATE hosts SET last_seen = 'not-a-time'", ["hosts"]),
        ("UPDATE host_patches SET observed_at = '2026-13-45'", ["host", "web1"]),
    ],
)
def test_rows_that_do_not_decode_are_one_line_and_exit_3(tmp_path, sqlite_db, sqlite_url, ko_factory, sql, args):
    from klpfleet.registry.patches import add_patch

    with sqlite_db.session.begin() as s:
        add_patch(s, ko_factory("livepatch_test"))
    Recorder(sqlite_db).record_task_result(
        None, "web1", "klpfleet.livepatch.patch_info", "ok", {"patches": [{"name": "livepatch_test"}]}
    )
    with sqlite_db.engine.begin() as conn:
        conn.execute(text(sql))
    result = run_klpfleet("--db", sqlite_url, *args)
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "cannot read (edited or damaged)" in result.stderr


def test_a_state_klpfleet_never_writes_makes_the_health_unknown(sqlite_db, sqlite_url, ko_factory):
    from klpfleet.registry.patches import add_patch

    with sqlite_db.session.begin() as s:
        add_patch(s, ko_factory("livepatch_test"))
    Recorder(sqlite_db).record_task_result(
        None, "web1", "klpfleet.livepatch.patch_info", "ok", {"patches": [{"name": "livepatch_test"}]}
    )
    with sqlite_db.engine.begin() as conn:
        conn.execute(text("UPDATE host_patches SET state = 'totally_fine'"))
    result = run_klpfleet("--db", sqlite_url, "status", "-o", "json")
    assert result.returncode == 3
    data = json.loads(result.stdout)["data"]
    assert data["health"] == "unknown" and data["unknown_states"] == 1
    table = run_klpfleet("--db", sqlite_url, "status")
    assert table.returncode == 3 and "none klpfleet writes" in table.stdout


def test_a_missing_vault_password_file_is_one_line(tmp_path, cli, sqlite_db, sqlite_url, monkeypatch):
    source = tmp_path / "hosts.ini"
    source.write_text("web1\n")
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(tmp_path / "nowhere"))
    result = cli("--db", sqlite_url, "inventory", "import", "-i", source)
    assert result.code == 2 and result.err.count("\n") == 1 and "vault password file" in result.err


def test_a_damaged_simulated_host_is_one_line(tmp_path):
    from .simhelpers import sim_host

    sim_host(tmp_path / "host")
    (tmp_path / "host" / "kernel.json").write_text("{not json")
    result = run_klpfleet("sim", "host", "log", str(tmp_path / "host"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "damaged" in result.stderr


def test_a_node_cannot_claim_every_cpu_in_the_world():
    from klpfleet.nodes.assign import assign
    from klpfleet.nodes.registry import Node

    def node(name: str, cpus: object) -> Node:
        return Node(name=name, user="u", host="h", capacity={"cpu_count": cpus})

    records = [{"name": f"h{i}", "labels": {}} for i in range(200)]
    shares, _ = assign(records, [node("honest", 4), node("greedy", 1e308), node("nan", float("nan"))])
    assert len(shares.get("honest", [])) > 50  # the liar's claim counts as one CPU, not as all of them


def test_delegating_to_an_address_records_the_host_at_that_address(sqlite_db, ko_factory):
    from klpfleet.registry.patches import add_patch

    with sqlite_db.session.begin() as s:
        add_patch(s, ko_factory("livepatch_test"))
        s.add(Host(name="db1", address="10.9.8.7", vars={}))
    result = {"outcome": "applied", "name": "livepatch_test", "_ansible_delegated_vars": {"ansible_host": "10.9.8.7"}}
    Recorder(sqlite_db).record_task_result(
        None, "web1", "klpfleet.livepatch.patch", "ok", result, delegate_to="10.9.8.7"
    )
    with sqlite_db.session() as s:
        assert set(s.scalars(select(Host.name))) == {"db1"}  # neither a phantom "10.9.8.7" nor web1
        assert s.scalar(select(HostPatch.state)) == "applied"
