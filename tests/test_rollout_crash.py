"""Crash safety and one driver per rollout, with real controller processes.

A controller is killed with SIGKILL at different points of a rollout and resumed; afterwards no host
that had completed was run again, the database agrees with every simulated kernel, and every wave's
decisions are in the event log. Two controllers on one rollout: the second is refused, on SQLite and on
PostgreSQL, and a driver whose lease was taken over can write nothing more."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from klpfleet.controller.lease import Lease, LeaseHeld, LeaseLost
from klpfleet.db.models import Event, Host, HostPatch, Rollout, WaveHost, utcnow

from .controllerhelpers import enable_count, enabled_on, fleet_db, register

pytestmark = pytest.mark.ansible
PATCH = "livepatch_cve_2026_1234"
FAULTS = {
    "sim-03": {"refuse": {"patch": "*", "object": "vmlinux", "errno": "ENODEV"}},
    "sim-06": {"stall": {"function": "*", "seconds": "forever"}},
}


def klpfleet(url, *args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "klpfleet.cli.main", "--db", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def rollout_status(db, rid):
    with db.session() as s:
        return s.scalar(select(Rollout.status).where(Rollout.id == rid))


@pytest.mark.parametrize("kill_after", [0.3, 2.0, 3.5, 5.5, 8.0])
def test_killed_controller_resumes_without_repeating_hosts(cli, tmp_path, monkeypatch, kill_after):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    env = {"KLPFLEET_LEASE_SECONDS": "2", "KLPFLEET_RUN_DIR": str(tmp_path / "runs")}
    db = fleet_db(tmp_path, url, hosts=8, faults=FAULTS)
    register(db, tmp_path)
    rid = cli(
        "--db",
        url,
        "rollout",
        "create",
        PATCH,
        "--waves",
        "1,2,100%",
        "--max-failed",
        "2",
        "--retry-refused",
        "1",
        "--retry-delay",
        "1s",
        "--transition-timeout",
        "2s",
        "-o",
        "json",
    ).json()["data"]["id"]
    first = klpfleet(url, "rollout", "start", str(rid), "--wait", env=env)
    time.sleep(kill_after)
    first.send_signal(signal.SIGKILL)
    first.wait()
    for _ in range(6):
        if rollout_status(db, rid) == "completed":
            break
        time.sleep(2.2)  # let the dead controller's lease expire
        proc = klpfleet(url, "rollout", "resume", str(rid), "--wait", env=env)
        _out, err = proc.communicate(timeout=180)
        assert proc.returncode in (0, 2), err
    assert rollout_status(db, rid) == "completed"

    with db.session() as s:
        outcomes = dict(
            s.execute(select(Host.name, WaveHost.outcome).join(WaveHost, WaveHost.host_id == Host.id)).all()
        )
        states = dict(s.execute(select(Host.name, HostPatch.state).join(HostPatch, HostPatch.host_id == Host.id)).all())
        kinds = [k for (k,) in s.execute(select(Event.kind).where(Event.rollout_id == rid))]
    healthy = [f"sim-0{i}" for i in (1, 2, 4, 5, 7, 8)]
    for host in healthy:
        assert outcomes[host] == "applied" and states[host] == "applied"
        assert enabled_on(tmp_path, host) == [PATCH]
        assert enable_count(tmp_path, host, PATCH) == 1, host  # never run again once done
    assert outcomes["sim-03"] == "refused" and enabled_on(tmp_path, "sim-03") == []
    assert outcomes["sim-06"] == "stalled" and enabled_on(tmp_path, "sim-06") == []
    assert states["sim-03"] == "refused" and states["sim-06"] == "stalled"
    assert kinds.count("wave.completed") == 3 and kinds.count("rollout.completed") == 1


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_second_controller_is_refused(cli, tmp_path, monkeypatch, request, backend):
    url = f"sqlite:///{tmp_path / 'k.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    db = fleet_db(tmp_path, url, hosts=3)
    register(db, tmp_path)
    rid = cli("--db", url, "rollout", "create", PATCH, "--waves", "1", "--bake", "20s", "-o", "json").json()["data"][
        "id"
    ]
    first = klpfleet(url, "rollout", "start", str(rid), "--wait", env={"KLPFLEET_RUN_DIR": str(tmp_path / "runs")})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with db.session() as s:
            if s.scalar(select(WaveHost.id).where(WaveHost.status == "done")):
                break
        time.sleep(0.3)
    second = klpfleet(url, "rollout", "drive", str(rid))
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2
    assert f"rollout {rid} is being driven by" in err and len(err.strip().splitlines()) == 1
    third = klpfleet(url, "rollout", "resume", str(rid), "--wait")
    _, err = third.communicate(timeout=60)
    assert third.returncode == 2 and "already has a live driver" in err
    # The first one is steered from outside: pause it during its bake.
    assert cli("--db", url, "rollout", "pause", str(rid)).code == 0
    first.communicate(timeout=60)
    assert first.returncode == 1
    assert rollout_status(db, rid) == "paused"
    assert enable_count(tmp_path, "sim-01", PATCH) == 1 and enabled_on(tmp_path, "sim-02") == []


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_fencing_token_stops_a_stale_driver(tmp_path, request, backend):
    url = f"sqlite:///{tmp_path / 'k.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    db = fleet_db(tmp_path, url, hosts=1, gather=False)
    with db.session.begin() as s:
        from klpfleet.db.models import Patch

        s.add(Patch(name="p", sha256="0" * 64, vermagic="v", kernel_release="r", size=1, path="/p"))
        s.flush()
        s.add(Rollout(patch_id=1, status="running", created_by="t"))
    stale = Lease(db, 1, seconds=60)
    stale.acquire()
    with pytest.raises(LeaseHeld):
        Lease(db, 1).acquire()
    with db.session.begin() as s:  # the stale driver stops heartbeating; its lease runs out
        s.execute(update(Rollout).values(lease_expires=utcnow() - timedelta(seconds=1)))
    fresh = Lease(db, 1, seconds=60)
    assert fresh.acquire() == stale.token + 1
    with pytest.raises(LeaseLost), db.session.begin() as s:
        stale.check(s)
    assert stale.renew() is False
    with db.session.begin() as s:
        assert fresh.check(s).lease_owner == fresh.owner
    fresh.release()
    stale._stop.set()
