"""Every wait ends and leaves a state to go on from: Ctrl-C (or SIGTERM) on a driving `--wait` pauses the rollout
and says how to resume it; `rollout status --watch` ends when the driver is gone or its --timeout passes; bakes
and health checks leave events."""

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select, update

from klpfleet.controller.lease import Lease
from klpfleet.db.models import Event, Rollout, utcnow

from .controllerhelpers import enable_count, enabled_on, fleet_db, register

pytestmark = pytest.mark.ansible
PATCH = "livepatch_cve_2026_1234"
# Tasks that sleep 3 s in the patched function: each host's transition takes that long, so a wave is in flight
# when the signal arrives.
SLOW = {f"sim-0{i}": {"stall": {"function": "*", "seconds": 3}} for i in range(1, 5)}


def create(cli, url, *args):
    result = cli("--db", url, "rollout", "create", PATCH, *args, "-o", "json")
    assert result.code == 0, result.err
    return result.json()["data"]["id"]


def kinds(db, rid):
    with db.session() as s:
        return [k for (k,) in s.execute(select(Event.kind).where(Event.rollout_id == rid).order_by(Event.id))]


def wait_for_event(db, rid, kind, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if kind in kinds(db, rid):
            return
        time.sleep(0.1)
    raise AssertionError(f"no {kind} event within {timeout}s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_pauses_a_waiting_rollout_and_says_how_to_resume(cli, tmp_path, monkeypatch, sig):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=4, faults=SLOW)
    register(db, tmp_path)
    rid = create(cli, url, "--waves", "2,100%", "--transition-timeout", "30s")
    proc = subprocess.Popen(
        [sys.executable, "-m", "klpfleet.cli.main", "--db", url, "rollout", "start", str(rid), "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KLPFLEET_NO_LIVE": "1"},
    )
    wait_for_event(db, rid, "wave.run")
    time.sleep(1.0)  # the first wave's hosts are in their transitions
    started = time.monotonic()
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert time.monotonic() - started < 30, "the signal did not stop the run at once"
    assert proc.returncode == 1, err
    assert f"resume it with `klpfleet rollout resume {rid} --wait`" in err
    assert "Traceback" not in err
    with db.session() as s:
        r = s.get(Rollout, rid)
        assert r.status == "paused" and signal.Signals(sig).name in r.pause_reason
        assert r.lease_owner is None  # nobody holds it: resume takes it at once
    assert kinds(db, rid)[-1] == "rollout.paused"

    resumed = cli("--db", url, "rollout", "resume", str(rid), "--wait")
    assert resumed.code == 0, resumed.err
    for i in range(1, 5):
        assert enabled_on(tmp_path, f"sim-0{i}") == [PATCH]
        assert enable_count(tmp_path, f"sim-0{i}", PATCH) == 1  # the hosts in flight were read, not run again


def test_ctrl_c_ends_a_reconcile_wait_after_pausing_its_rollout(cli, tmp_path, monkeypatch):
    from klpfleet.db.models import Host, HostPatch, Patch

    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=4, faults=SLOW)
    register(db, tmp_path)
    with db.session.begin() as s:  # every host lost the patch at a reboot: reconcile puts it back
        patch = s.scalar(select(Patch))
        for host in s.scalars(select(Host)):
            s.add(HostPatch(host_id=host.id, patch_id=patch.id, state="lost_at_reboot", observed_by="test"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "klpfleet.cli.main", "--db", url, "reconcile", "--wait", "--waves", "2,100%"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KLPFLEET_NO_LIVE": "1"},
    )
    wait_for_event(db, 1, "wave.run")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "stopped: nothing more is planned this time" in err and "resume it with `klpfleet rollout resume 1" in err
    with db.session() as s:
        assert [r.status for r in s.scalars(select(Rollout))] == ["paused"]


def orphan(db, rid, *, lease_seconds_ago: float) -> None:
    """The rollout as a controller that died left it: running, its lease expired."""
    from datetime import timedelta

    with db.session.begin() as s:
        s.execute(
            update(Rollout)
            .where(Rollout.id == rid)
            .values(
                status="running",
                started_at=utcnow(),
                lease_owner="dead@controller",
                lease_token=7,
                lease_expires=utcnow() - timedelta(seconds=lease_seconds_ago),
            )
        )


@pytest.mark.parametrize("output", ["table", "json"])
def test_watch_ends_when_the_rollout_has_no_driver(cli, tmp_path, output):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=2)
    register(db, tmp_path)
    rid = create(cli, url, "--waves", "1")
    orphan(db, rid, lease_seconds_ago=60)
    started = time.monotonic()
    watched = cli("--db", url, "rollout", "status", str(rid), "--watch", "--interval", "200ms", "-o", output)
    assert watched.code == 4, watched.err
    assert 9 < time.monotonic() - started < 30  # a grace for a driver being started, then the end
    assert f"no driver (its controller stopped); continue it with `klpfleet rollout resume {rid} --wait`" in (
        watched.err
    )


def test_watch_gives_up_after_its_timeout_while_a_driver_holds_the_rollout(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=2)
    register(db, tmp_path)
    rid = create(cli, url, "--waves", "1")
    with db.session.begin() as s:
        s.execute(update(Rollout).where(Rollout.id == rid).values(status="running"))
    with Lease(db, rid):  # a live driver (heartbeating) that does not get anywhere
        watched = cli("--db", url, "rollout", "status", str(rid), "--watch", "--interval", "0.2", "--timeout", "2s")
    assert watched.code == 3, watched.err
    assert f"rollout {rid} is still running after 2s" in watched.err


def test_an_interval_that_is_not_a_duration_is_one_line(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    fleet_db(tmp_path, url, hosts=1, gather=False)
    result = cli("--db", url, "rollout", "status", "1", "--watch", "--interval", "soon")
    assert result.code == 2 and "'soon' is not a duration" in result.err and "Traceback" not in result.err


def test_bakes_and_health_checks_leave_events(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=2)
    register(db, tmp_path)
    rid = create(cli, url, "--waves", "1,100%", "--bake", "1s", "--health-check", "sh -c 'echo all good'")
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 0, result.err
    assert "baking for 1s after wave 1" in result.err and "health check: 1 passed, 0 failed" in result.err
    k = kinds(db, rid)
    assert k.count("wave.bake_started") == 1 and k.count("wave.bake_ended") == 1  # no bake after the last wave
    assert k.index("wave.bake_started") < k.index("wave.bake_ended")
    assert k.count("host.health_passed") == 2
    with db.session() as s:
        ended = s.scalar(select(Event).where(Event.kind == "wave.bake_ended"))
        passed = s.scalar(select(Event).where(Event.kind == "host.health_passed"))
    assert ended.details["ended"] == "elapsed" and ended.details["waited"] >= 1.0
    assert passed.details["rc"] == 0 and "all good" in passed.details["stdout_tail"]
