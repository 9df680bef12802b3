"""Faults outside klpfleet's control, each ending in a defined state with a clear message: a host that
becomes unreachable mid-rollout, a SQLite database locked by another writer or on a full disk, a
PostgreSQL server restarted under a running driver or down."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time

import pytest
import yaml
from sqlalchemy import func, select, text

from klpfleet.db.engine import open_database
from klpfleet.db.models import Event, Host, HostPatch
from klpfleet.inventory.importer import apply_import
from klpfleet.inventory.sources import read_inventory

from .conftest import new_pg_server, run_klpfleet
from .controllerhelpers import enabled_on, fleet_db, register

PATCH = "livepatch_cve_2026_1234"


def host_count(url: str) -> int:
    with open_database(url).session() as s:
        return int(s.scalar(select(func.count(Host.id))))


def write_hosts_inventory(path, count: int, prefix: str = "web") -> None:
    path.write_text(yaml.safe_dump({"all": {"hosts": {f"{prefix}{i:03d}": {"zone": "a"} for i in range(count)}}}))


# ------------------------------------------------------------------------------- hosts


@pytest.mark.ansible
def test_a_host_unreachable_mid_rollout_is_recorded_and_pauses_the_rollout(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=4)  # gathered: every host reachable when the rollout is planned
    register(db, tmp_path)
    rid = cli("--db", url, "rollout", "create", PATCH, "--waves", "1,100%", "-o", "json").json()["data"]["id"]

    # After planning, sim-03 drops off the network (its SSH port now refuses connections).
    inventory = yaml.safe_load((tmp_path / "fleet" / "inventory.yml").read_text())
    inventory["all"]["hosts"]["sim-03"].update(ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=9)
    (tmp_path / "moved.yml").write_text(yaml.safe_dump(inventory))
    with db.session.begin() as s:
        apply_import(s, read_inventory([str(tmp_path / "moved.yml")]), prune=False)

    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 1  # paused, not crashed
    data = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    assert data["status"] == "paused"
    assert data["pause_reason"] == "wave 2: 1 hard failure(s) (unreachable 1) exceed the budget of 0"
    wave2 = {h["host"]: h for h in data["waves"][1]["hosts"]}
    assert wave2["sim-03"]["outcome"] == "unreachable"
    with db.session() as s:
        assert s.scalar(select(Host.reachable).where(Host.name == "sim-03")) is False
        # Never reached, never touched: no patch state is invented for it.
        assert (
            s.scalar(select(HostPatch.state).join(Host, Host.id == HostPatch.host_id).where(Host.name == "sim-03"))
            is None
        )
    assert enabled_on(tmp_path, "sim-03") == []  # the host itself was never touched
    others = [h for h in wave2 if h != "sim-03"]
    assert others and all(wave2[h]["outcome"] == "applied" for h in others)


# ------------------------------------------------------------------------------- SQLite


class WriteLock:
    """Another process's long write transaction: BEGIN IMMEDIATE holds SQLite's single writer lock until
    released (or for `seconds`)."""

    def __init__(self, path, seconds: float = 60.0) -> None:
        self.held, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, args=(path, seconds))
        self.thread.start()
        assert self.held.wait(10)

    def _hold(self, path, seconds: float) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        self.held.set()
        self.release.wait(seconds)
        conn.execute("COMMIT")
        conn.close()

    def done(self) -> None:
        self.release.set()
        self.thread.join()


@pytest.fixture
def sqlite_fleet(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    assert run_klpfleet("--db", url, "db", "upgrade").returncode == 0
    write_hosts_inventory(tmp_path / "inv.yml", 50)
    return url, tmp_path / "k.db", tmp_path / "inv.yml"


def test_a_briefly_locked_sqlite_database_is_waited_for(sqlite_fleet):
    url, path, inventory = sqlite_fleet
    lock = WriteLock(path, seconds=2.0)
    start = time.monotonic()
    proc = run_klpfleet("--db", url, "inventory", "import", "-i", str(inventory))
    lock.done()
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start >= 1.5  # it waited for the other writer instead of failing
    assert host_count(url) == 50


def test_a_lock_held_past_the_busy_timeout_is_one_line_and_changes_nothing(sqlite_fleet):
    url, path, inventory = sqlite_fleet
    lock = WriteLock(path)
    try:
        proc = run_klpfleet(
            "--db", url, "inventory", "import", "-i", str(inventory), env={"KLPFLEET_BUSY_TIMEOUT": "1"}
        )
        # Readers are not blocked by a writer (WAL): monitoring keeps working meanwhile.
        status = run_klpfleet("--db", url, "status", "-o", "json")
    finally:
        lock.done()
    assert proc.returncode == 3
    assert proc.stderr.strip() == "klpfleet: database error: database is locked"
    assert status.returncode == 0, status.stderr
    assert host_count(url) == 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MiB tmpfs: a disk that fills up (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk, leave: int = 0) -> None:
    """Fill the disk to the last byte, then give `leave` bytes back."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    if leave:
        os.truncate(disk / "filler", max(0, os.path.getsize(disk / "filler") - leave))


def test_a_full_disk_under_sqlite_is_one_line_and_loses_nothing(tiny_disk, tmp_path):
    url = f"sqlite:///{tiny_disk / 'k.db'}"
    assert run_klpfleet("--db", url, "db", "upgrade").returncode == 0
    write_hosts_inventory(tmp_path / "first.yml", 20, prefix="db")
    assert run_klpfleet("--db", url, "inventory", "import", "-i", str(tmp_path / "first.yml")).returncode == 0
    write_hosts_inventory(tmp_path / "big.yml", 3000)

    # The disk fills up during a write: the import is refused whole, reads go on.
    fill(tiny_disk, leave=128 * 1024)
    proc = run_klpfleet("--db", url, "inventory", "import", "-i", str(tmp_path / "big.yml"))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip() == "klpfleet: database error: database or disk is full"
    assert run_klpfleet("--db", url, "hosts", "-o", "json").returncode == 0

    # Full to the last byte: SQLite cannot even open its WAL index; the message says why.
    (tiny_disk / "filler").unlink()
    fill(tiny_disk)
    proc = run_klpfleet("--db", url, "status")
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "the disk holding it is full" in lines[0], proc.stderr

    (tiny_disk / "filler").unlink()
    assert host_count(url) == 20  # the failed import was rolled back whole; nothing earlier was lost
    with open_database(url).engine.connect() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    assert run_klpfleet("--db", url, "inventory", "import", "-i", str(tmp_path / "big.yml")).returncode == 0
    assert host_count(url) == 3020


# ------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def own_pg():
    """A PostgreSQL server of this test's own: restarting the shared one would disturb other tests."""
    server = new_pg_server()
    yield server
    server.stop()


@pytest.mark.postgres
def test_a_postgres_restart_between_transactions_is_survived(own_pg):
    url = own_pg.create_database()
    db = open_database(url, create=True)
    from klpfleet.db.migrate import upgrade

    upgrade(db)
    with db.session() as s:
        assert s.scalar(select(func.count(Host.id))) == 0  # a pooled connection now exists
    own_pg.restart()  # ... and the server has cut it
    with db.session() as s:
        assert s.scalar(select(func.count(Event.id))) == 0


@pytest.mark.postgres
@pytest.mark.ansible
def test_a_rollout_survives_a_postgres_restart_during_its_bake(own_pg, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = own_pg.create_database()
    db = fleet_db(tmp_path, url, hosts=3)
    register(db, tmp_path)
    rid = cli("--db", url, "rollout", "create", PATCH, "--waves", "1,100%", "--bake", "6s", "-o", "json").json()
    rid = rid["data"]["id"]

    def restart_during_bake() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with db.session() as s:
                if s.scalar(select(func.count(Event.id)).where(Event.kind == "wave.completed")):
                    break
            time.sleep(0.3)
        own_pg.restart()

    restarter = threading.Thread(target=restart_during_bake)
    restarter.start()
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    restarter.join()
    assert result.code == 0, result.err
    assert cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]["status"] == "completed"
    assert all(enabled_on(tmp_path, f"sim-0{i}") == [PATCH] for i in (1, 2, 3))


@pytest.mark.postgres
def test_a_postgres_server_that_is_down_is_one_line(own_pg):
    url = own_pg.create_database()
    assert run_klpfleet("--db", url, "db", "upgrade").returncode == 0
    own_pg.stop_server()
    try:
        proc = run_klpfleet("--db", url, "status")
    finally:
        own_pg.start()
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("klpfleet: error: cannot reach the database"), proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("command", [("status",), ("db", "upgrade"), ("--debug", "hosts")])
def test_a_database_password_is_never_printed(command):
    url = "postgresql://klp:s3cret-pw@127.0.0.1:1/fleet"
    args = ("--db", url, *command) if command[0] != "--debug" else ("--debug", "--db", url, *command[1:])
    proc = run_klpfleet(*args)
    assert proc.returncode == (1 if "--debug" in args else 3)  # --debug: the traceback, Python's exit code
    assert "s3cret-pw" not in proc.stdout + proc.stderr
    assert "klp:***@127.0.0.1:1/fleet" in proc.stderr
