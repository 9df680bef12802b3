"""`klpfleet demo`, the README's main job, end to end as a user runs it: a separate process, a fresh
directory, no database or environment prepared."""

import json
import os

import pytest

from klpfleet.sim.monitoring import prometheus_binary

from .conftest import run_klpfleet

pytestmark = pytest.mark.ansible


def test_demo_runs_a_real_rollout_and_writes_only_under_its_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLPFLEET_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"))
    proc = run_klpfleet("demo", "--dir", str(tmp_path / "demo"), "--hosts", "20", env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "The gate fired and paused the rollout" in proc.stderr
    assert "rollout 1: completed" in proc.stderr and "rollout 2: completed" in proc.stderr
    if prometheus_binary() is not None:  # CI installs it; the act says it was skipped otherwise
        assert "rollout 3: rolled_back: wave 1: analysis failed: errors-vs-control: ratio 51" in proc.stderr
    else:
        assert "skipped: this act gates the rollout on a real Prometheus" in proc.stderr
    db = str(tmp_path / "demo" / "klpfleet.db")
    status = run_klpfleet("--db", db, "status", "-o", "json")
    assert status.returncode == 1  # degraded: refusals, a reversed stall, an unreachable host
    data = json.loads(status.stdout)["data"]
    states = {p["name"]: p["states"] for p in data["patches"]}
    # sim-06 booted a new kernel (superseded); sim-04 lost the patch on a rescue boot and reconcile put it back.
    assert states["livepatch_cve_2026_1234"] == {"applied": 15, "refused": 2, "stalled": 1, "superseded": 1}
    assert "sim-02 applied, sim-03 applied, sim-04 lost_at_reboot, sim-06 superseded" in proc.stderr
    (cve,) = [c for c in data["cves"] if c["cve"] == "CVE-2026-1234"]
    assert (cve["covered"], cve["exposed"], cve["exposed_by_reason"]) == (16, 3, {"refused": 2, "stalled": 1})
    assert run_klpfleet("--db", db, "cves").returncode == 2  # hosts are still exposed
    assert states["livepatch_cve_2026_5678"]["absent"] == 16
    assert data["hosts"]["unreachable"] == 1
    # Nothing outside the demo directory: no default database, no data dir, no stray files next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "home"]
    assert not (home / ".local" / "share" / "klpfleet").exists()
    # Again without --fresh: refused with one line; with --fresh: starts over.
    again = run_klpfleet("demo", "--dir", str(tmp_path / "demo"), "--hosts", "20", env=env, cwd=tmp_path)
    assert again.returncode == 2 and "--fresh" in again.stderr


def test_fresh_never_removes_a_directory_that_is_not_a_demo(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    proc = run_klpfleet("demo", "--dir", str(precious), "--fresh")
    assert proc.returncode == 2 and "not a klpfleet demo directory" in proc.stderr
    assert (precious / "data.txt").read_text() == "keep me"
