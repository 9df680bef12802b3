"""Real ansible-playbook runs of the collection's playbooks on simulated fleets, recorded into the
database by the recorder callback (SQLite and PostgreSQL)."""

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from klpfleet.db.engine import open_database
from klpfleet.db.migrate import upgrade
from klpfleet.db.models import AnsibleRun, Event, Host, HostPatch
from klpfleet.inventory.importer import apply_import
from klpfleet.inventory.sources import read_inventory
from klpfleet.registry.patches import add_patch
from klpfleet.sim.fleet import create_fleet
from klpfleet.sim.spec import normalize, write_ko

from .ansiblehelpers import BIN, ROOT, ansible_env, ansible_inventory, apply_ko, playbook
from .simhelpers import build

pytestmark = pytest.mark.ansible

FAULTS = {
    "sim-02": {"refuse": {"patch": "*", "object": "vmlinux", "errno": "ENODEV"}},
    "sim-03": {"stall": {"function": "*", "seconds": "forever"}},
    "sim-04": {"unreachable": True},
    "sim-05": {"kernel_release": "6.1.0-99-amd64"},
}


def make_fleet(tmp: Path, db_url: str, hosts: int = 6, faults=None):
    create_fleet(tmp / "fleet", {"hosts": hosts, "labels": {"zone": ["a", "b"]}, "faults": faults or {}, "speed": 0})
    db = open_database(db_url, create=True)
    upgrade(db)
    ko = write_ko(
        normalize(
            {
                "name": "livepatch_cve_2026_1234",
                "replace": True,
                "objects": [{"name": "vmlinux", "funcs": ["tcp_send_challenge_ack"]}],
            }
        ),
        tmp / "lp.ko",
    )
    with db.session.begin() as s:
        apply_import(s, read_inventory([str(tmp / "fleet" / "inventory.yml")]), prune=False)
        add_patch(s, ko)
    return db, ko, hashlib.sha256(ko.read_bytes()).hexdigest()


def states(db):
    with db.session() as s:
        rows = s.execute(
            select(Host.name, HostPatch.state, HostPatch.error_code, HostPatch.host_clean).join(
                HostPatch, HostPatch.host_id == Host.id
            )
        ).all()
    return {name: (state, code, clean) for name, state, code, clean in rows}


def test_idempotence_quartet(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    db, ko, sha = make_fleet(tmp_path, sqlite_url, hosts=3)
    proc = playbook(
        tmp_path / "fleet" / "inventory.yml",
        ROOT / "tests" / "playbooks" / "quartet.yml",
        "-e",
        f"ko={ko}",
        "-e",
        f"sha={sha}",
        db_url=sqlite_url,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
    # Check-mode results changed no state: per host one event to applied and one to absent.
    with db.session() as s:
        kinds = s.execute(select(Event.host_name, Event.details).where(Event.kind == "patch.state")).all()
    per_host = {}
    for host, details in kinds:
        per_host.setdefault(host, []).append(details["to"])
    assert per_host == {h: ["applied", "absent"] for h in ("sim-01", "sim-02", "sim-03")}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_apply_remove_gather_recorded(tmp_path, backend, request, monkeypatch):
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    url = f"sqlite:///{tmp_path / 'k.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    db, ko, sha = make_fleet(tmp_path, url, faults=FAULTS)
    inventory = tmp_path / "fleet" / "inventory.yml"
    proc = apply_ko(
        inventory,
        ko,
        sha,
        "-e",
        "klp_transition_timeout=3",
        db_url=url,
    )
    assert proc.returncode == 4, proc.stdout[-3000:]  # hosts failed and one was unreachable, as they must
    got = states(db)
    assert got["sim-01"][0] == got["sim-06"][0] == "applied"
    assert got["sim-02"] == ("refused", "refused", True)
    assert got["sim-03"] == ("stalled", "transition_stalled", True)
    assert got["sim-05"] == ("failed", "vermagic_mismatch", True)
    # Unreachable at the one task that copies and loads: the patch's state on it is unknown, not "not applied".
    assert got["sim-04"] == ("unreachable", None, None)
    with db.session() as s:
        sim04 = s.scalar(select(Host).where(Host.name == "sim-04"))
        assert sim04.reachable is False
        assert s.scalar(select(Host.kernel_release).where(Host.name == "sim-05")) == "6.1.0-99-amd64"
        [run] = s.scalars(select(AnsibleRun)).all()
        assert (run.status, run.playbook) == ("failed", str(ROOT / "playbooks" / "apply.yml"))
        assert run.stats["hosts"]["sim-02"]["failures"] == 1
        stalled = s.scalar(select(Event).where(Event.host_name == "sim-03", Event.kind == "patch.state"))
        assert stalled.details["stalled_tasks"][0]["comm"] == "app_worker"
        assert stalled.actor.startswith("ansible:")

    # A patch removed behind klpfleet's back is seen by the next gather.
    proc = playbook(
        inventory,
        ROOT / "playbooks" / "remove.yml",
        "-e",
        "klp_patch_name=livepatch_cve_2026_1234",
        "-e",
        f"klp_patch_sha256={sha}",
        "--limit",
        "sim-01",
        db_url=url,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert states(db)["sim-01"][0] == "absent"
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._operations import remove_patch
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import primitives_for

    remove_patch(primitives_for("sim", str(tmp_path / "fleet" / "hosts" / "sim-06")), "livepatch_cve_2026_1234")
    proc = playbook(inventory, ROOT / "playbooks" / "gather.yml", db_url=url)
    got = states(db)
    assert got["sim-06"][0] == "absent" and got["sim-01"][0] == "absent"
    assert got["sim-02"][0] == "refused"  # the refusal stays the last word for a clean host
    with db.session() as s:
        assert s.scalar(select(func.count(AnsibleRun.id))) == 3


def test_no_log_values_are_not_stored(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    db, ko, sha = make_fleet(tmp_path, sqlite_url, hosts=3, faults={"sim-03": FAULTS["sim-03"]})
    proc = playbook(
        tmp_path / "fleet" / "inventory.yml",
        ROOT / "tests" / "playbooks" / "secret.yml",
        "-e",
        f"ko={ko}",
        "-e",
        f"sha={sha}",
        db_url=sqlite_url,
    )
    assert proc.returncode == 2
    # Ansible censors a no_log result before any callback sees it: the recorder knows only that it failed.
    assert states(db)["sim-03"][:3] == ("failed", None, None)  # unknown: status rates it critical
    assert states(db)["sim-01"][0] == "applied"
    with db.session() as s:
        details = s.scalar(select(Event.details).where(Event.host_name == "sim-03", Event.kind == "patch.state"))
    assert "stalled_tasks" not in details and "app_worker" not in str(details)


def test_schema_behind_fails_loudly_and_records_nothing(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    db, _ko, _sha = make_fleet(tmp_path, sqlite_url, hosts=2)
    from klpfleet.db.migrate import downgrade

    downgrade(db, "0001")
    proc = playbook(tmp_path / "fleet" / "inventory.yml", ROOT / "playbooks" / "gather.yml", db_url=sqlite_url)
    assert proc.returncode == 0
    assert "NOT RECORDING" in proc.stdout + proc.stderr
    assert "klpfleet db upgrade" in proc.stdout + proc.stderr
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0001"


def test_interrupted_run_is_marked_and_keeps_what_was_recorded(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    db, _ko, _sha = make_fleet(tmp_path, sqlite_url, hosts=2)
    proc = subprocess.Popen(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(tmp_path / "fleet" / "inventory.yml"),
            str(ROOT / "tests" / "playbooks" / "sleepy.yml"),
        ],
        cwd=ROOT,
        env=ansible_env(sqlite_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with db.session() as s:
            if s.scalar(select(func.count(Host.id)).where(Host.kernel_release.is_not(None))) == 2:
                break
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    with db.session() as s:
        [run] = s.scalars(select(AnsibleRun)).all()
        assert run.status == "interrupted" and run.finished_at is not None
        assert s.scalar(select(func.count(Host.id)).where(Host.reachable.is_(True))) == 2


def test_inventory_plugin_lists_groups_by_label_kernel_and_state(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "art"))
    _db, ko, sha = make_fleet(tmp_path, sqlite_url, faults=FAULTS)
    apply_ko(tmp_path / "fleet" / "inventory.yml", ko, sha, "-e", "klp_transition_timeout=2", db_url=sqlite_url)
    config = tmp_path / "fleet.klpfleet.yml"
    config.write_text(
        f"plugin: klpfleet.livepatch.fleet\ndb: {sqlite_url}\n"
        "keyed_groups:\n  - key: klp_labels.zone\n    prefix: in_zone\n"
        "groups:\n  unpatched: \"klp_patch_states.get('livepatch_cve_2026_1234') != 'applied'\"\n"
    )
    import json

    out = ansible_inventory(config, "--list")
    assert out.returncode == 0, out.stderr
    inv = json.loads(out.stdout)
    assert inv["klp_livepatch_cve_2026_1234_refused"]["hosts"] == ["sim-02"]
    assert sorted(inv["klp_livepatch_cve_2026_1234_applied"]["hosts"]) == ["sim-01", "sim-06"]
    assert sorted(inv["zone_a"]["hosts"]) == ["sim-01", "sim-03", "sim-05"]
    assert sorted(inv["in_zone_b"]["hosts"]) == ["sim-02", "sim-04", "sim-06"]
    assert "sim-05" in inv["kernel_6_1_0_99_amd64"]["hosts"]
    assert sorted(inv["unpatched"]["hosts"]) == ["sim-02", "sim-03", "sim-04", "sim-05"]
    hv = inv["_meta"]["hostvars"]["sim-04"]
    # Database strings are untrusted in Ansible 2.19: never templated, listed as __ansible_unsafe.
    assert hv["ansible_host"] == {"__ansible_unsafe": "127.0.0.1"} and hv["ansible_port"] == 9
    # The plugin's inventory drives a real run: gather through it.
    proc = playbook(config, ROOT / "playbooks" / "gather.yml", "--limit", "sim-01", db_url=sqlite_url)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_inventory_plugin_reports_an_unusable_database(tmp_path):
    config = tmp_path / "fleet.klpfleet.yml"
    config.write_text(f"plugin: klpfleet.livepatch.fleet\ndb: {tmp_path / 'missing.db'}\n")
    out = ansible_inventory(config, "--list", env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"})
    assert out.returncode != 0
    assert "klpfleet db upgrade" in out.stderr


def test_built_collection_installs_and_works_outside_the_checkout(tmp_path):
    build_dir = tmp_path / "build"
    subprocess.run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "build",
            str(ROOT / "collections" / "ansible_collections" / "klpfleet" / "livepatch"),
            "--output-path",
            str(build_dir),
        ],
        check=True,
        capture_output=True,
        env=ansible_env(),
    )
    [tarball] = build_dir.glob("klpfleet-livepatch-*.tar.gz")
    installed = tmp_path / "installed"
    subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "install", "--force", str(tarball), "-p", str(installed)],
        check=True,
        capture_output=True,
        env=ansible_env(),
    )
    host = tmp_path / "host"
    from .simhelpers import sim_host

    sim_host(host)
    ko = build(tmp_path, "lp_fix")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "ansible.cfg").write_text(
        f"[defaults]\ncollections_path = {installed}\ncollections_scan_sys_path = False\n"
    )
    env = ansible_env()
    env.update(ANSIBLE_CONFIG=str(outside / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(installed))
    proc = subprocess.run(
        [
            str(BIN / "ansible"),
            "localhost",
            "-m",
            "klpfleet.livepatch.patch",
            "-a",
            f"src={ko} backend=sim sim_root={host}",
            "-e",
            "ansible_python_interpreter={{ ansible_playbook_python }}",
        ],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    tree = sorted(str(p.relative_to(installed)) for p in installed.rglob("*"))[:12]
    assert proc.returncode == 0, f"{tree}\n{proc.stdout}{proc.stderr}"
    assert '"outcome": "applied"' in proc.stdout
    assert (
        str(installed)
        in subprocess.run(
            [str(BIN / "ansible-doc"), "klpfleet.livepatch.patch"],
            cwd=outside,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
