"""Rollouts driven through ansible-runner over simulated fleets: gates, pause/promote/abort, rollback,
retries of refusals, health checks. Every check looks at both the database and the simulated kernels."""

import json

import pytest
from sqlalchemy import select

from klpfleet.db.models import Event, Host, HostPatch

from .controllerhelpers import enable_count, enabled_on, fleet_db, kernel_modules, register, sim_root

pytestmark = pytest.mark.ansible
PATCH = "livepatch_cve_2026_1234"
STALL = {"stall": {"function": "*", "seconds": "forever"}}
REFUSE = {"refuse": {"patch": "*", "object": "vmlinux", "errno": "ENODEV"}}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    return tmp_path, f"sqlite:///{tmp_path / 'k.db'}"


def create(cli, url, *args):
    result = cli("--db", url, "rollout", "create", PATCH, "--transition-timeout", "2s", *args, "-o", "json")
    assert result.code == 0, result.err
    return result.json()["data"]["id"]


def status(cli, url, rid):
    return cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]


def kinds(db, rid):
    with db.session() as s:
        return [k for (k,) in s.execute(select(Event.kind).where(Event.rollout_id == rid).order_by(Event.id))]


def test_completes_and_every_host_is_patched_once(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=6)
    register(db, tmp)
    rid = create(cli, url, "--waves", "1,50%", "--by", "zone")
    assert cli("--db", url, "rollout", "status", str(rid)).code == 3  # planned: not finished
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 0, result.err
    followed = cli("--db", url, "rollout", "status", str(rid), "--watch", "-o", "json")
    lines = followed.out.strip().splitlines()
    assert followed.code == 0 and len(lines) == 1  # nothing changes any more: one document, then the end
    assert json.loads(lines[0])["data"]["status"] == "completed"
    data = status(cli, url, rid)
    assert data["status"] == "completed"
    watched = cli("--db", url, "rollout", "status", str(rid), "--watch")
    assert watched.code == 0 and "COMPLETED" in watched.out
    assert [w["outcomes"] for w in data["waves"]] == [{"applied": 1}, {"applied": 1}, {"applied": 2}, {"applied": 2}]
    for i in range(1, 7):
        assert enabled_on(tmp, f"sim-0{i}") == [PATCH]
        assert enable_count(tmp, f"sim-0{i}", PATCH) == 1
    k = kinds(db, rid)
    assert k[:3] == ["rollout.planned", "rollout.started", "wave.started"]
    assert k.count("gate.evaluated") == 4 and k[-1] == "rollout.completed"
    with db.session() as s:
        states = dict(s.execute(select(Host.name, HostPatch.state).join(HostPatch, HostPatch.host_id == Host.id)).all())
    assert set(states.values()) == {"applied"} and len(states) == 6
    # Nothing is left to roll out: a new plan excludes every host as already applied.
    again = cli("--db", url, "rollout", "create", PATCH)
    assert again.code == 2 and "no eligible host" in again.err


def test_gate_pauses_then_promote_continues(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=4, faults={"sim-02": STALL})
    register(db, tmp)
    rid = create(cli, url, "--waves", "2", "--max-failed", "0")
    paused = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert paused.code == 1
    data = status(cli, url, rid)
    assert data["status"] == "paused"
    assert data["pause_reason"] == "wave 1: 1 hard failure(s) (stalled 1) exceed the budget of 0"
    assert cli("--db", url, "rollout", "status", str(rid), "--watch").code == 1
    assert data["waves"][1]["status"] == "pending" and enabled_on(tmp, "sim-03") == []
    assert enabled_on(tmp, "sim-02") == []  # the stall was reversed: host clean
    resumed = cli("--db", url, "rollout", "promote", str(rid), "--wait")
    assert resumed.code == 0, resumed.err
    assert status(cli, url, rid)["status"] == "completed"
    assert enabled_on(tmp, "sim-04") == [PATCH]
    assert "rollout.promote_requested" in kinds(db, rid)


def test_failure_rolls_back_in_reverse_wave_order(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=5, faults={"sim-05": STALL})
    register(db, tmp)
    rid = create(cli, url, "--waves", "2", "--on-failure", "rollback")
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 1
    data = status(cli, url, rid)
    assert data["status"] == "rolled_back"
    assert all(enabled_on(tmp, f"sim-0{i}") == [] for i in range(1, 6))
    with db.session() as s:
        removals = (
            s.execute(
                select(Event.host_name)
                .where(Event.kind == "patch.state")
                .where(Event.details["to"].as_string() == "absent")
                .order_by(Event.id)
            )
            .scalars()
            .all()
        )
    assert set(removals[:2]) == {"sim-03", "sim-04"} and set(removals[2:]) == {"sim-01", "sim-02"}  # wave 2 first


def test_refusals_are_retried_and_budgeted(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=3, faults={"sim-02": REFUSE})
    register(db, tmp)
    rid = create(
        cli,
        url,
        "--waves",
        "100%",
        "--max-refused",
        "0",
        "--on-refusal",
        "pause",
        "--retry-refused",
        "2",
        "--retry-delay",
        "1s",
    )
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 1
    data = status(cli, url, rid)
    host = next(h for h in data["waves"][0]["hosts"] if h["host"] == "sim-02")
    assert (host["outcome"], host["error_code"], host["attempts"]) == ("refused", "refused", 3)
    assert enable_count(tmp, "sim-02", PATCH) == 3 and enabled_on(tmp, "sim-02") == []
    assert data["status"] == "paused" and "refusal" in data["pause_reason"]
    assert kinds(db, rid).count("wave.retry_refused") == 2


def test_abort_rolls_back_a_paused_rollout(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=3, faults={"sim-03": STALL})
    register(db, tmp)
    rid = create(cli, url, "--waves", "100%")
    assert cli("--db", url, "rollout", "start", str(rid), "--wait").code == 1
    assert enabled_on(tmp, "sim-01") == [PATCH]
    aborted = cli("--db", url, "rollout", "abort", str(rid), "--wait")
    assert aborted.code == 1
    assert status(cli, url, rid)["status"] == "aborted"
    assert enabled_on(tmp, "sim-01") == [] and enabled_on(tmp, "sim-02") == []


def test_pause_request_is_honoured_between_waves(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=2)
    register(db, tmp)
    rid = create(cli, url, "--waves", "1")
    assert cli("--db", url, "rollout", "pause", str(rid)).code == 0
    assert status(cli, url, rid)["status"] == "paused"
    assert cli("--db", url, "rollout", "start", str(rid)).code == 2  # not planned any more
    assert cli("--db", url, "rollout", "resume", str(rid), "--wait").code == 0
    assert enabled_on(tmp, "sim-02") == [PATCH]


def test_failing_health_check_counts_against_the_budget(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=2)
    register(db, tmp)
    rid = create(cli, url, "--waves", "1", "--health-check", "sh -c 'echo degraded >&2; exit 3'")
    assert cli("--db", url, "rollout", "start", str(rid), "--wait").code == 1
    data = status(cli, url, rid)
    assert data["waves"][0]["hosts"][0]["outcome"] == "health_failed"
    with db.session() as s:
        event = s.scalar(select(Event).where(Event.kind == "host.health_failed"))
    assert event.details["rc"] == 3 and "degraded" in event.details["stderr_tail"]


def test_stacked_and_replaced_rollback(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=3)
    register(db, tmp, "lp_base", objects=[{"name": "vmlinux", "funcs": ["f1"]}])
    register(db, tmp, "lp_top", objects=[{"name": "vmlinux", "funcs": ["f2"]}])
    register(db, tmp, "lp_cumulative", replace=True)
    for patch, hosts in (("lp_base", "all"), ("lp_top", "sim-01:sim-02"), ("lp_cumulative", "sim-03")):
        result = cli("--db", url, "rollout", "create", patch, "--hosts", hosts, "--waves", "100%", "-o", "json")
        assert result.code == 0, result.err
        assert cli("--db", url, "rollout", "start", str(result.json()["data"]["id"]), "--wait").code == 0
    assert enabled_on(tmp, "sim-01") == ["lp_base", "lp_top"]
    assert enabled_on(tmp, "sim-03") == ["lp_cumulative"]  # lp_base was replaced

    refused = cli("--db", url, "rollback", "lp_base", "--hosts", "sim-01", "-o", "json")
    assert refused.code == 1
    [row] = refused.json()["data"]
    assert row["result"] == "stacked" and "lp_top" in row["detail"]
    assert enabled_on(tmp, "sim-01") == ["lp_base", "lp_top"]

    cascade = cli("--db", url, "rollback", "lp_base", "--cascade", "-o", "json")
    rows = {r["host"]: r for r in cascade.json()["data"]}
    assert rows["sim-01"]["removed"] == ["lp_top", "lp_base"] and rows["sim-02"]["result"] == "removed"
    assert enabled_on(tmp, "sim-01") == [] and enabled_on(tmp, "sim-02") == []


def test_replaced_host_has_nothing_to_remove(cli, env):
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._operations import apply_patch
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import primitives_for

    tmp, url = env
    db = fleet_db(tmp, url, hosts=1)
    register(db, tmp, "lp_v1", replace=True, objects=[{"name": "vmlinux", "funcs": ["f1"]}])
    register(db, tmp, "lp_v2", replace=True, objects=[{"name": "vmlinux", "funcs": ["f1"]}])
    rid = cli("--db", url, "rollout", "create", "lp_v1", "-o", "json").json()["data"]["id"]
    assert cli("--db", url, "rollout", "start", str(rid), "--wait").code == 0
    # lp_v2 loaded behind klpfleet's back: the database still believes lp_v1 is applied; rollback reads the
    # host first.
    apply_patch(primitives_for("sim", sim_root(tmp, "sim-01")), str(tmp / "lp_v2.ko"))
    result = cli("--db", url, "rollback", "lp_v1", "-o", "json")
    [row] = result.json()["data"]
    assert row["result"] == "nothing_to_remove" and "lp_v2" in row["detail"]
    assert result.code == 0
    assert enabled_on(tmp, "sim-01") == ["lp_v2"]


def test_a_cumulative_patch_is_rolled_back_to_the_one_it_replaced_never_to_nothing(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=2)
    register(db, tmp, "lp_v1", replace=True, objects=[{"name": "vmlinux", "funcs": ["f1"]}])
    register(db, tmp, "lp_v2", replace=True, objects=[{"name": "vmlinux", "funcs": ["f1", "f2"]}])
    for patch in ("lp_v1", "lp_v2"):
        rid = cli("--db", url, "rollout", "create", patch, "-o", "json").json()["data"]["id"]
        assert cli("--db", url, "rollout", "start", str(rid), "--wait").code == 0
    assert enabled_on(tmp, "sim-01") == ["lp_v2"]
    with db.session() as s:  # the apply's result said what lp_v2 replaced: no gather needed
        event = s.scalars(
            select(Event).where(Event.kind == "patch.state", Event.patch_name == "lp_v1").order_by(Event.id.desc())
        ).first()
    assert (event.details["to"], event.details["replaced_by"]) == ("absent", "lp_v2")

    refused = cli("--db", url, "rollback", "lp_v2")
    assert refused.code == 2
    assert "leaves 2 hosts with no livepatch at all" in refused.err and "--to lp_v1" in refused.err
    assert enabled_on(tmp, "sim-01") == ["lp_v2"]  # said before acting: nothing touched

    restored = cli("--db", url, "rollback", "lp_v2", "--to", "lp_v1", "-o", "json")
    assert restored.code == 0, restored.err
    assert {r["result"] for r in restored.json()["data"]} == {"removed"}
    for host in ("sim-01", "sim-02"):
        assert enabled_on(tmp, host) == ["lp_v1"]
        assert "lp_v2" not in kernel_modules(tmp, host)  # the freed module was unloaded too

    unpatched = cli("--db", url, "rollback", "lp_v1", "--allow-unpatched", "-o", "json")
    assert unpatched.code == 0, unpatched.err
    assert enabled_on(tmp, "sim-01") == []


def run_in_terminal(argv, env=None, timeout=300):
    """argv on a 160x50 pseudo-terminal; (exit code, what it drew)."""
    from .ptyhelpers import run_in_terminal as on_pty

    code, drawn = on_pty(argv, env, columns=160, lines=50, timeout=timeout)
    return code, drawn.decode(errors="replace")


def test_start_wait_on_a_terminal_shows_the_live_view(cli, env):
    tmp, url = env
    register(fleet_db(tmp, url, hosts=6), tmp)
    rid = create(cli, url, "--waves", "2,100%")
    code, drawn = run_in_terminal(["--db", url, "rollout", "start", str(rid), "--wait"])
    assert code == 0, drawn[-2000:]
    assert "\x1b[" in drawn  # drawn for a terminal: the live view ...
    assert f"rollout {rid} {PATCH}" in drawn and "COMPLETED" in drawn and "━" in drawn  # ... with its bars
    assert "last decision: gate.evaluated" in drawn and "rollout completed" in drawn  # and the lines above it
    assert status(cli, url, rid)["status"] == "completed"


def test_the_background_driver_logs_json_lines_when_asked(cli, env, monkeypatch):
    tmp, url = env
    register(fleet_db(tmp, url, hosts=4), tmp)
    rid = create(cli, url, "--waves", "1,100%")
    monkeypatch.setenv("KLPFLEET_LOG_FORMAT", "json")
    assert cli("--db", url, "rollout", "start", str(rid)).code == 0  # in the background
    import time

    deadline = time.monotonic() + 120
    while status(cli, url, rid)["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.5)
    (log,) = (tmp / "runs").glob(f"*/rollout-{rid}/driver.log")  # under the database's own folder
    for _ in range(20):  # the driver writes its last line just after the database says completed
        records = [json.loads(line) for line in log.read_text().splitlines()]
        if records and records[-1]["kind"] == "finished":
            break
        time.sleep(0.25)
    kinds = [r["kind"] for r in records]
    assert kinds[-1] == "finished" and records[-1]["status"] == "completed"
    assert kinds.count("wave") == 2 and kinds.count("counts") == 2
    assert all(r["rollout"] == rid and r["at"].endswith("Z") for r in records)
    assert records[kinds.index("counts")]["counts"]["applied"] == 1
