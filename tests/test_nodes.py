"""Execution nodes: waves streamed with ansible-runner's transmit / worker / process over SSH to three nodes
(Unix users with their own virtualenvs behind a real sshd), recorded on the controller; and every way a node
fails: worker killed mid-wave, silent, unreachable, an incompatible runner, a truncated or corrupt stream,
the controller killed while nodes run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from klpfleet.db.engine import open_database
from klpfleet.db.migrate import upgrade
from klpfleet.db.models import AnsibleRun, Event, Host, HostPatch, Rollout, WaveHost
from klpfleet.inventory.importer import apply_import
from klpfleet.inventory.sources import read_inventory
from klpfleet.sim.fleet import create_fleet

from .controllerhelpers import enable_count, enabled_on, fleet_db, gather_fleet, register
from .nodehelpers import NODES, OLD_RUNNER_NODE, give_hosts, shared_dir

pytestmark = [pytest.mark.ansible, pytest.mark.ssh, pytest.mark.nodes]
PATCH = "livepatch_cve_2026_1234"
ZONES = ("a", "b", "c")
FAULTS = {
    "sim-07": {"refuse": {"patch": "*", "object": "vmlinux", "errno": "ENODEV"}},
    "sim-11": {"stall": {"function": "*", "seconds": "forever"}},
}


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    path = shared_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def node_fleet(cli, lab, base: Path, url: str, hosts: int, faults=None, users=NODES, **node_args):
    """A simulated fleet whose zone a/b/c hosts belong to (and are served by) the three node users."""
    create_fleet(base / "fleet", {"hosts": hosts, "labels": {"zone": list(ZONES)}, "faults": faults or {}, "speed": 0})
    width = max(2, len(str(hosts)))
    give_hosts(base / "fleet", {f"sim-{i:0{width}d}": NODES[(i - 1) % 3] for i in range(1, hosts + 1)})
    db = open_database(url, create=True)
    upgrade(db)
    with db.session.begin() as s:
        apply_import(s, read_inventory([str(base / "fleet" / "inventory.yml")]), prune=False)
    for user, zone in zip(users, ZONES, strict=False):
        extra = node_args.get(user, [])
        added = cli("--db", url, "node", "add", user, *lab.add_args(user), "--serves", f"zone={zone}", *extra)
        assert added.code == 0, added.err + added.out
    gather_fleet(db, base)
    return db


def create(cli, url, *args):
    result = cli(
        "--db",
        url,
        "rollout",
        "create",
        PATCH,
        "--transition-timeout",
        "2s",
        "--engine",
        "ansible",
        *args,
        "-o",
        "json",
    )
    assert result.code == 0, result.err
    return result.json()["data"]["id"]


def klpfleet(url, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "klpfleet.cli.main", "--db", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KLPFLEET_LEASE_SECONDS": "2"},
    )


def summary(db, rid):
    """What a rollout did, independent of where its Ansible ran."""
    with db.session() as s:
        states = dict(s.execute(select(Host.name, HostPatch.state).join(HostPatch, HostPatch.host_id == Host.id)).all())
        outcomes = dict(
            s.execute(
                select(Host.name, WaveHost.outcome)
                .join(WaveHost, WaveHost.host_id == Host.id)
                .where(WaveHost.rollout_id == rid)
            ).all()
        )
        events = list(s.scalars(select(Event).where(Event.rollout_id == rid).order_by(Event.id)))
        flow = [e.kind for e in events if e.kind.split(".")[0] in ("rollout", "wave", "gate")]
        gates = [
            {k: v for k, v in (e.details or {}).items() if k not in ("engine", "requested", "engine_reason")}
            for e in events
            if e.kind == "gate.evaluated"
        ]
        kinds = Counter(e.kind for e in events if e.kind not in ("rollout.started",))
        host_events = Counter((e.kind, e.host_name) for e in events)
        status = s.scalar(select(Rollout.status).where(Rollout.id == rid))
    return {
        "status": status,
        "states": states,
        "outcomes": outcomes,
        "flow": flow,
        "gates": gates,
        "kinds": kinds,
        "host_events": host_events,
    }


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running(user: str, pattern: str) -> bool:
    return subprocess.run(["pgrep", "-u", user, "-f", pattern], capture_output=True).returncode == 0


def test_sixty_hosts_on_three_nodes_match_the_same_rollout_run_locally(cli, node_lab, base, tmp_path):
    local_url = f"sqlite:///{tmp_path / 'local.db'}"
    local = fleet_db(tmp_path / "local", local_url, hosts=60, faults=FAULTS)
    register(local, tmp_path / "local")
    url = f"sqlite:///{tmp_path / 'nodes.db'}"
    db = node_fleet(cli, node_lab, base, url, 60, FAULTS)
    register(db, base)
    listed = cli("--db", url, "node", "list", "-o", "json")
    assert listed.code == 0
    nodes = {n["name"]: n for n in listed.json()["data"]["nodes"]}
    assert {n: nodes[n]["hosts"] for n in NODES} == {"klpnode1": 20, "klpnode2": 20, "klpnode3": 20}
    assert all(nodes[n]["capacity"]["runner_version"] and nodes[n]["capacity"]["cpu_count"] for n in NODES)

    policy = ("--waves", "1,10%,100%", "--max-failed", "2", "--retry-refused", "1", "--retry-delay", "1s")
    runs = {}
    for name, d, u in (("local", local, local_url), ("nodes", db, url)):
        rid = create(cli, u, *policy)
        result = cli("--db", u, "rollout", "start", str(rid), "--wait")
        assert result.code == 0, result.err
        runs[name] = summary(d, rid)
    assert runs["nodes"]["status"] == runs["local"]["status"] == "completed"
    for key in ("states", "outcomes", "flow", "gates", "kinds", "host_events"):
        assert runs["nodes"][key] == runs["local"][key], key
    assert runs["nodes"]["outcomes"]["sim-07"] == "refused" and runs["nodes"]["outcomes"]["sim-11"] == "stalled"

    with db.session() as s:
        idents = list(s.scalars(select(AnsibleRun.ident).where(AnsibleRun.rollout_id.is_not(None))))
    assert {i.rsplit("@", 1)[1] for i in idents if "@" in i} == set(NODES) and all("@" in i for i in idents)
    for i in range(1, 61):  # each host was touched by its zone's node user only
        host = f"sim-{i:02d}"
        owner = (base / "fleet" / "hosts" / host / "patches").stat().st_uid
        assert owner == int(subprocess.check_output(["id", "-u", NODES[(i - 1) % 3]])), host
        if host not in FAULTS:
            assert enable_count(base, host, PATCH) == 1 and enabled_on(base, host) == [PATCH]


def _pause_then_resume(cli, db, url, rid, *, failure: str, fix=None):
    """The rollout paused on a node failure with hosts in flight counted unreachable; after `fix`, a resume
    re-reads them first and completes, no host enabled twice."""
    paused = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    assert paused["status"] == "paused" and failure in (paused["pause_reason"] or ""), paused
    assert all(
        w["outcomes"].get("applied", 0) + w["outcomes"].get("unreachable", 0) == len(w["hosts"])
        for w in paused["waves"]
        if w["status"] != "pending"
    ), paused
    with db.session() as s:
        kinds = [k for (k,) in s.execute(select(Event.kind).where(Event.rollout_id == rid))]
        flight = s.scalars(select(WaveHost.error_code).where(WaveHost.rollout_id == rid, WaveHost.status == "running"))
        in_flight = list(flight)
    assert f"node.{failure}" in kinds and in_flight and set(in_flight) == {failure}
    if fix:
        fix()
    resumed = cli("--db", url, "rollout", "resume", str(rid), "--wait")
    assert resumed.code == 0, resumed.err
    done = summary(db, rid)
    assert done["status"] == "completed" and done["kinds"]["host.recovered"] >= len(in_flight)
    return done


def test_a_worker_killed_mid_wave_leaves_its_hosts_in_flight_and_resume_rereads_them(cli, node_lab, base, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    slow = {f"sim-{i:02d}": {"stall": {"function": "*", "seconds": 3}} for i in range(1, 13)}
    db = node_fleet(cli, node_lab, base, url, 12, slow)
    register(db, base)
    rid = create(cli, url, "--waves", "100%", "--transition-timeout", "20s")
    driver = klpfleet(url, "rollout", "start", str(rid), "--wait")
    wait_for(lambda: running("klpnode1", "ansible-playbook"), what="klpnode1's job")
    time.sleep(1.0)  # its hosts are mid-transition
    subprocess.run(["pkill", "-KILL", "-u", "klpnode1"], check=False)  # the node's worker and its Ansible die
    _out, err = driver.communicate(timeout=120)
    assert driver.returncode == 1, err  # paused
    done = _pause_then_resume(cli, db, url, rid, failure="node_lost")
    for i in range(1, 13):
        assert enabled_on(base, f"sim-{i:02d}") == [PATCH] and enable_count(base, f"sim-{i:02d}", PATCH) == 1
    assert set(done["outcomes"].values()) == {"applied"}


def test_a_silent_node_is_cut_off_but_keepalives_carry_a_slow_one(cli, node_lab, base, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    slow = {f"sim-{i:02d}": {"stall": {"function": "*", "seconds": 8}} for i in range(1, 7)}
    timing = ["--keepalive", "1", "--silent-after", "5"]
    db = node_fleet(cli, node_lab, base, url, 6, slow, klpnode1=timing, klpnode2=timing, klpnode3=timing)
    register(db, base)
    # 8 s transitions print nothing for longer than --silent-after: keepalives alone keep the nodes in.
    rid = create(cli, url, "--waves", "1,100%", "--transition-timeout", "20s")
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 0, result.err
    assert set(summary(db, rid)["outcomes"].values()) == {"applied"}

    register(db, base, name="livepatch_cve_2026_9999")
    rid = cli(
        "--db",
        url,
        "rollout",
        "create",
        "livepatch_cve_2026_9999",
        "--waves",
        "100%",
        "--engine",
        "ansible",
        "--transition-timeout",
        "20s",
        "-o",
        "json",
    ).json()["data"]["id"]
    driver = klpfleet(url, "rollout", "start", str(rid), "--wait")
    wait_for(lambda: running("klpnode2", "ansible-playbook"), what="klpnode2's job")
    subprocess.run(["pkill", "-STOP", "-u", "klpnode2"], check=False)  # frozen: not even a keepalive
    try:
        _out, err = driver.communicate(timeout=120)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", "klpnode2"], check=False)
        subprocess.run(["pkill", "-CONT", "-u", "klpnode2"], check=False)
    assert driver.returncode == 1, err  # paused
    _pause_then_resume(cli, db, url, rid, failure="node_silent")


@pytest.mark.parametrize(
    ("pipe", "failure"),
    [("head -c 2500", "node_lost"), ("awk 'NR==5{print \"not json\"} {print}'", "node_stream_corrupt")],
)
def test_a_truncated_or_corrupt_stream_is_named_and_never_counts_as_applied(
    cli, node_lab, base, tmp_path, pipe, failure
):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = node_fleet(cli, node_lab, base, url, 6)
    register(db, base)
    broken = node_lab.wrapper("klpnode3", "broken", pipe)
    assert cli("--db", url, "node", "remove", "klpnode3").code == 0
    added = cli(
        "--db", url, "node", "add", "klpnode3", *node_lab.add_args("klpnode3", runner=broken), "--serves", "zone=c"
    )
    assert added.code == 0, added.err
    rid = create(cli, url, "--waves", "100%")
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 1, result.err  # paused

    def fix():
        assert cli("--db", url, "node", "remove", "klpnode3").code == 0
        assert (
            cli("--db", url, "node", "add", "klpnode3", *node_lab.add_args("klpnode3"), "--serves", "zone=c").code == 0
        )

    _pause_then_resume(cli, db, url, rid, failure=failure, fix=fix)
    for i in range(1, 7):
        assert enable_count(base, f"sim-{i:02d}", PATCH) == 1


def test_an_unreachable_or_incompatible_node_fails_its_hosts_before_anything_runs(cli, node_lab, base, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = node_fleet(cli, node_lab, base, url, 6)
    register(db, base)
    for gone in ("klpnode2", "klpnode3"):  # zones b and c go to a node that is down and to one too old
        assert cli("--db", url, "node", "remove", gone).code == 0
    closed = node_lab.add_args("klpnode2", port=1)  # nothing listens there
    assert cli("--db", url, "node", "add", "klpnode2", *closed, "--serves", "zone=b", "--no-check").code == 0
    old = cli("--db", url, "node", "add", OLD_RUNNER_NODE, *node_lab.add_args(OLD_RUNNER_NODE), "--serves", "zone=c")
    assert old.code == 1 and "1.4.7" in old.out + old.err  # added, and told why it cannot serve
    checked = cli("--db", url, "node", "check", "-o", "json")
    assert checked.code == 1
    codes = {c["name"]: c["code"] for c in checked.json()["data"]}
    assert codes == {"klpnode1": None, "klpnode2": "node_unreachable", OLD_RUNNER_NODE: "node_incompatible"}

    rid = create(cli, url, "--waves", "100%", "--max-failed", "10")
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 0, result.err
    with db.session() as s:
        rows = dict(s.execute(select(Host.name, WaveHost.error_code).join(WaveHost, WaveHost.host_id == Host.id)).all())
        outcomes = dict(
            s.execute(select(Host.name, WaveHost.outcome).join(WaveHost, WaveHost.host_id == Host.id)).all()
        )
        kinds = [k for (k,) in s.execute(select(Event.kind).where(Event.rollout_id == rid))]
    assert rows == {
        "sim-01": None,
        "sim-04": None,
        "sim-02": "node_unreachable",
        "sim-05": "node_unreachable",
        "sim-03": "node_incompatible",
        "sim-06": "node_incompatible",
    }
    assert outcomes["sim-02"] == outcomes["sim-03"] == "unreachable" and outcomes["sim-01"] == "applied"
    assert "node.node_unreachable" in kinds and "node.node_incompatible" in kinds
    for host in ("sim-02", "sim-03", "sim-05", "sim-06"):
        assert enabled_on(base, host) == [] and enable_count(base, host, PATCH) == 0  # nothing ran there


def test_the_controller_killed_while_nodes_run_resumes_without_repeating_hosts(cli, node_lab, base, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    slow = {f"sim-{i:02d}": {"stall": {"function": "*", "seconds": 2}} for i in range(1, 10)}
    db = node_fleet(cli, node_lab, base, url, 9, slow)
    register(db, base)
    rid = create(cli, url, "--waves", "100%", "--transition-timeout", "20s")
    driver = klpfleet(url, "rollout", "start", str(rid), "--wait")
    wait_for(lambda: all(running(u, "ansible-playbook") for u in NODES), what="every node's job")
    time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    for _ in range(6):
        with db.session() as s:
            if s.scalar(select(Rollout.status).where(Rollout.id == rid)) == "completed":
                break
        time.sleep(2.2)  # the dead controller's lease runs out
        resumed = klpfleet(url, "rollout", "resume", str(rid), "--wait")
        _out, err = resumed.communicate(timeout=180)
        assert resumed.returncode in (0, 2), err
    assert summary(db, rid)["status"] == "completed"
    for i in range(1, 10):
        assert enabled_on(base, f"sim-{i:02d}") == [PATCH] and enable_count(base, f"sim-{i:02d}", PATCH) == 1


@pytest.mark.parametrize(
    ("mode", "failure"),
    [("forge", "node_forged_result"), ("overlong", "node_stream_corrupt"), ("endless", "node_deadline")],
)
def test_a_compromised_node_writes_nothing_records_nothing_and_pauses(
    cli, node_lab, base, tmp_path, mode, failure, monkeypatch
):
    """A node whose runner lies (security review N1, N2, N3, N7): results for hosts it was not given and for a ghost,
    an artifacts archive escaping the run folder, one endless line, keepalives forever. Nothing is written outside
    the run folder, no host is created or recorded for it, and the rollout pauses naming the failure; once the node
    is replaced, resume re-reads its hosts and completes."""
    monkeypatch.setenv("KLPFLEET_NODE_JOB_DEADLINE", "8")
    outside = Path(base) / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = node_fleet(cli, node_lab, base, url, 6)
    register(db, base)
    liar = node_lab.hostile("klpnode3", f"hostile-{mode}", mode, outside)
    assert cli("--db", url, "node", "remove", "klpnode3").code == 0
    added = cli(
        "--db", url, "node", "add", "klpnode3", *node_lab.add_args("klpnode3", runner=liar), "--serves", "zone=c"
    )
    assert added.code == 0, added.err
    rid = create(cli, url, "--waves", "100%")
    started = time.monotonic()
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 1, result.err  # paused
    assert time.monotonic() - started < 120
    assert list(outside.iterdir()) == [] and not list(Path(tmp_path).rglob("pwned*"))
    assert not list(Path("/").glob("pwned*")) and not list(Path(base).rglob("pwned*"))
    with db.session() as s:
        assert "ghost-99" not in set(s.scalars(select(Host.name)))
        liar_runs = {
            f"ansible-run:{r.id}" for r in s.scalars(select(AnsibleRun)) if (r.ident or "").endswith("@klpnode3")
        }
        assert liar_runs and not set(s.scalars(select(HostPatch.observed_by))) & liar_runs  # nothing it said is kept
        forged = s.scalars(select(Event).where(Event.kind == "node.forged_result")).all()
    if mode == "forge":
        assert len(forged) == 1 and set(forged[0].details["hosts"]) == {"ghost-99", "sim-01"}

    def fix():
        assert cli("--db", url, "node", "remove", "klpnode3").code == 0
        assert (
            cli("--db", url, "node", "add", "klpnode3", *node_lab.add_args("klpnode3"), "--serves", "zone=c").code == 0
        )

    _pause_then_resume(cli, db, url, rid, failure=failure, fix=fix)
