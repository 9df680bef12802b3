"""Rollouts gated on what a real Prometheus sees: a simulated fleet whose patches declare what they do to a service
metric (`metrics: {error_rate: 0.05}` while loaded), scraped with klpfleet's own /metrics by Debian's Prometheus.
Real ansible-playbook runs; every verdict is checked in the database, the kernels and the CLI."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from sqlalchemy import select

from klpfleet.db.models import Event

from .controllerhelpers import enabled_on, fleet_db, register
from .prometheushelpers import fleet_prometheus, needs_prometheus

pytestmark = [pytest.mark.ansible, needs_prometheus]
PATCH = "livepatch_cve_2026_1234"
# The wave's error rate against the control hosts', by regex of names and by the join with klpfleet_rollout_host.
BY_REGEX = {
    "name": "errors-vs-control",
    "query": 'avg(klpfleet_sim_error_rate{host=~"$wave_hosts"})',
    "control": 'avg(klpfleet_sim_error_rate{host=~"$control_hosts"})',
    "condition": "< 2",
    "interval": "1s",
    "count": 2,
    "initial_delay": "2s",
}
JOIN = 'avg(klpfleet_sim_error_rate * on(host) group_left() klpfleet_rollout_host{rollout="$rollout", role="%s"})'
BY_JOIN = {
    "name": "errors-joined",
    "query": JOIN % "wave",
    "control": JOIN % "control",
    "compare": "difference",
    "condition": "< 0.01",
    "interval": "1s",
    "count": 2,
    "initial_delay": "2s",
    "inconclusive_limit": 1,  # klpfleet's own series may reach Prometheus a scrape after the wave's hosts changed role
}
TRANSITION = {"name": "transition-p95", "transition": "p95", "condition": "< 30"}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=4)
    server = fleet_prometheus(tmp_path, tmp_path / "fleet", db)
    server.start()
    yield tmp_path, url, db, server
    server.close()


def policy_file(tmp, server, checks, **more):
    path = tmp / "rollout.yml"
    path.write_text(yaml.safe_dump({"waves": [1, "100%"], "prometheus": server.url, "analysis": checks, **more}))
    return str(path)


def create(cli, url, *args):
    result = cli("--db", url, "rollout", "create", PATCH, "--transition-timeout", "2s", *args, "-o", "json")
    assert result.code == 0, result.err
    return result.json()["data"]["id"]


def analysis_events(db, rid, kind="analysis.measured"):
    with db.session() as s:
        rows = s.scalars(select(Event).where(Event.rollout_id == rid, Event.kind == kind).order_by(Event.id))
        return [e.details for e in rows]


def test_a_good_patch_passes_every_wave(cli, env):
    tmp, url, db, server = env
    register(db, tmp, metrics={"error_rate": 0.0})
    rid = create(cli, url, "--policy", policy_file(tmp, server, [BY_REGEX, BY_JOIN, TRANSITION]))
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 0, result.err + result.out
    for host in ("sim-01", "sim-02", "sim-03", "sim-04"):
        assert enabled_on(tmp, host) == [PATCH]
    measured = analysis_events(db, rid)
    by_check = {(m["check"], m["wave"]): m["result"] for m in measured}
    # wave 1 (the canary) against the three control hosts; wave 2 has none left to compare with
    assert by_check[("errors-vs-control", 1)] == "passed" and by_check[("errors-joined", 1)] == "passed"
    assert by_check[("errors-vs-control", 2)] == "skipped" and by_check[("errors-joined", 2)] == "skipped"
    assert by_check[("transition-p95", 1)] == "passed" and by_check[("transition-p95", 2)] == "passed"
    ratio = next(m for m in measured if m["check"] == "errors-vs-control" and m["wave"] == 1)
    assert ratio["value"] == pytest.approx(1.0) and ratio["control"] == pytest.approx(0.001)
    assert ratio["query"] == f"{BY_REGEX['query']}  vs  {BY_REGEX['control']} (ratio)"  # as written, not filled
    ended = analysis_events(db, rid, "analysis.ended")
    assert [e["result"] for e in ended] == ["passed", "passed"]
    gates = analysis_events(db, rid, "gate.evaluated")
    assert gates[0]["analysis"] == "passed" and set(gates[0]["counts"]["transition"]) == {"hosts", "p50", "p95", "max"}
    shown = cli("--db", url, "rollout", "status", str(rid)).out
    rows = [line.split() for line in shown.split("# analysis", 1)[1].split("#", 1)[0].splitlines()]
    assert ["1", "passed", "errors-vs-control", "passed", "1.0", "0.001", "-"] in rows, shown
    assert "# transition seconds" in shown
    data = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    assert data["waves"][0]["analysis"]["result"] == "passed"
    assert data["waves"][0]["transition"]["hosts"] == 1


def test_a_bad_patch_is_stopped_at_the_canary_and_rolled_back(cli, env):
    tmp, url, db, server = env
    register(db, tmp, metrics={"error_rate": 0.05})
    path = policy_file(tmp, server, [BY_REGEX], **{"on-failure": "rollback"})
    rid = create(cli, url, "--policy", path)
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 1
    status = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    assert status["status"] == "rolled_back"
    assert "analysis failed" in status["pause_reason"] and "errors-vs-control" in status["pause_reason"]
    failed = [m for m in analysis_events(db, rid) if m["result"] == "failed"]
    assert failed and failed[0]["value"] == pytest.approx(51.0, rel=0.01)  # (0.001 + 0.05) / 0.001
    for host in ("sim-01", "sim-02", "sim-03", "sim-04"):
        assert enabled_on(tmp, host) == []  # the canary's patch removed, the others never touched
    assert [w["outcomes"] for w in status["waves"]][1] == {"pending": 3}


def test_prometheus_stopped_between_waves_pauses_the_next_one_and_resume_goes_on(cli, env):
    tmp, url, db, server = env
    register(db, tmp, metrics={"error_rate": 0.0})
    check = {**BY_REGEX, "consecutive_error_limit": 1}
    path = tmp / "rollout.yml"
    path.write_text(yaml.safe_dump({"waves": [1, 1, "100%"], "prometheus": server.url, "analysis": [check]}))
    rid = create(cli, url, "--policy", str(path))
    stopped = threading.Event()

    def stop_after_the_first_wave():  # Prometheus goes away while the rollout runs, as it does in real life
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not analysis_events(db, rid, "analysis.ended"):
            time.sleep(0.1)
        server.stop()
        stopped.set()

    watcher = threading.Thread(target=stop_after_the_first_wave)
    watcher.start()
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    watcher.join()
    assert stopped.is_set() and result.code == 1, result.err
    status = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    assert status["status"] == "paused" and status["pause_reason"].startswith("wave 2: analysis inconclusive")
    assert [w["analysis"]["result"] for w in status["waves"][:2]] == ["passed", "inconclusive"]
    assert enabled_on(tmp, "sim-02") == [PATCH] and enabled_on(tmp, "sim-03") == []  # wave 3 never started
    server.start()
    resumed = cli("--db", url, "rollout", "resume", str(rid), "--wait")
    assert resumed.code == 0, resumed.out + resumed.err
    assert enabled_on(tmp, "sim-03") == enabled_on(tmp, "sim-04") == [PATCH]
    assert [e["result"] for e in analysis_events(db, rid, "analysis.ended")] == [
        "passed",
        "inconclusive",
        "passed",  # wave 2 analysed again from the start once Prometheus is back
        "passed",
    ]


def test_prometheus_down_pauses_as_inconclusive_and_resume_goes_on(cli, env):
    tmp, url, db, server = env
    register(db, tmp, metrics={"error_rate": 0.0})
    check = {**BY_REGEX, "initial_delay": "0s", "interval": "0.5s", "count": 4, "consecutive_error_limit": 1}
    rid = create(cli, url, "--policy", policy_file(tmp, server, [check]))
    server.stop()
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 1
    status = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    assert status["status"] == "paused"
    assert "analysis inconclusive" in status["pause_reason"] and "unreachable" in status["pause_reason"]
    assert [m["result"] for m in analysis_events(db, rid)] == ["error", "error"]
    assert enabled_on(tmp, "sim-02") == []  # the next wave never started
    server.start()
    resumed = cli("--db", url, "rollout", "resume", str(rid), "--wait")
    assert resumed.code == 0, resumed.out + resumed.err
    assert enabled_on(tmp, "sim-02") == [PATCH]
    assert "passed" in [m["result"] for m in analysis_events(db, rid)]


def test_an_empty_result_never_passes(cli, env):
    tmp, url, db, server = env
    register(db, tmp)
    check = {"name": "typo", "query": "avg(klpfleet_sim_eror_rate)", "condition": "< 1", "interval": "0.5s"}
    rid = create(cli, url, "--policy", policy_file(tmp, server, [check]))
    assert cli("--db", url, "rollout", "start", str(rid), "--wait").code == 1
    status = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    assert status["status"] == "paused" and "no series" in status["pause_reason"]
    assert [m["result"] for m in analysis_events(db, rid)] == ["inconclusive"]
    # klpfleet's own metrics say so too, for the dashboards and alerts built on them
    metrics = cli("--db", url, "metrics").out
    assert f'klpfleet_analysis_passing{{check="typo",rollout="{rid}",wave="1"}} -1.0' in metrics
    assert f'klpfleet_rollout_host{{host="sim-01",role="wave",rollout="{rid}"}} 1.0' in metrics
    json.dumps(status, allow_nan=False)  # raises on a NaN or an infinity anywhere in the paused status


def test_a_background_check_stops_the_rollout_between_waves(cli, env):
    tmp, url, db, server = env
    register(db, tmp, metrics={"error_rate": 0.05})
    background = {
        **BY_JOIN,
        "name": "errors-background",
        "background": True,
        "failure_limit": 1,
        "inconclusive_limit": 3,
    }
    path = policy_file(tmp, server, [background], bake="60s", **{"on-failure": "rollback"})
    rid = create(cli, url, "--policy", path)
    result = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert result.code == 1, result.err
    status = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    assert status["status"] == "rolled_back", (status["pause_reason"], result.err)
    assert status["pause_reason"].startswith("background analysis failed: errors-background: difference 0.05")
    measured = analysis_events(db, rid)
    judged = [m["result"] for m in measured if m["result"] != "inconclusive"]
    assert judged == ["failed", "failed"]  # failure_limit 1: the second failure ends it
    assert all(m["background"] for m in measured)
    assert status["background_analysis"]["errors-background"]["result"] == "failed"
    assert all(w["analysis"] is None for w in status["waves"])  # it belongs to the rollout, not to a wave
    shown = cli("--db", url, "rollout", "status", str(rid)).out
    assert "background (wave 1)" in shown and "errors-background" in shown
    bake = analysis_events(db, rid, "wave.bake_ended")
    assert bake[0]["ended"] == "analysis" and bake[0]["waited"] < 30  # stopped long before the bake's 60 s
    for host in ("sim-01", "sim-02", "sim-03", "sim-04"):
        assert enabled_on(tmp, host) == []
