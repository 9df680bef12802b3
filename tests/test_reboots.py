"""A fleet after reboots, end to end: a rollout keeps the patch for boot, simulated hosts reboot (same kernel, the
patch kept or not, another kernel), gather records what each reboot did, `cves` answers who is exposed, and
`reconcile` puts back what was lost, with the rollout machinery."""

import shutil

import pytest
from sqlalchemy import select

from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost
from klpfleet.db.models import Event, Host, HostPatch
from klpfleet.registry.patches import add_patch
from klpfleet.sim.fleet import reboot_host
from klpfleet.sim.spec import normalize, write_ko

from .conftest import run_klpfleet
from .controllerhelpers import enable_count, enabled_on, fleet_db, gather_fleet, sim_root

pytestmark = pytest.mark.ansible
PATCH = "livepatch_cve_2026_1234"
CVE = "CVE-2026-1234"
NEW_KERNEL = "6.1.0-57-amd64"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=4)
    ko = write_ko(normalize({"name": PATCH, "objects": [{"name": "vmlinux", "funcs": ["f"]}]}), tmp_path / "p.ko")
    with db.session.begin() as s:
        add_patch(s, ko, cves=[CVE])
    return tmp_path, url, db


def states(db):
    with db.session() as s:
        return dict(s.execute(select(Host.name, HostPatch.state).join(HostPatch, HostPatch.host_id == Host.id)).all())


def events_of(db, kind):
    with db.session() as s:
        return sorted(h for (h,) in s.execute(select(Event.host_name).where(Event.kind == kind)))


def roll_out(cli, url):
    rid = cli("--db", url, "rollout", "create", PATCH, "--waves", "100%", "-o", "json").json()["data"]["id"]
    assert cli("--db", url, "rollout", "start", str(rid), "--wait").code == 0


def test_reboots_are_recorded_and_reconcile_puts_back_what_was_lost(cli, env):
    tmp, url, db = env
    roll_out(cli, url)
    assert set(states(db).values()) == {"applied"}

    shutil.rmtree(sim_root(tmp, "sim-02") + "/boot")  # sim-02 kept nothing for boot (wiped by hand)
    assert [r["outcome"] for r in reboot_host(tmp / "fleet" / "hosts" / "sim-01")["results"]] == ["applied"]
    assert reboot_host(tmp / "fleet" / "hosts" / "sim-02")["results"] == []
    reboot_host(tmp / "fleet" / "hosts" / "sim-03", NEW_KERNEL)
    gather_fleet(db, tmp, "after-reboots")

    assert states(db) == {
        "sim-01": "applied",  # reloaded at boot
        "sim-02": "lost_at_reboot",
        "sim-03": "superseded",
        "sim-04": "applied",  # never rebooted
    }
    assert events_of(db, "host.rebooted") == ["sim-01", "sim-02", "sim-03"]
    assert events_of(db, "patch.reloaded_at_boot") == ["sim-01"]
    host = cli("--db", url, "host", "sim-01", "-o", "json").json()["data"]
    with SimHost(sim_root(tmp, "sim-01")) as k:
        assert host["boot_id"] == k.s["boot_id"] and host["booted_at"].startswith("20")
    status = cli("--db", url, "status", "-o", "json")
    assert status.code == 1  # degraded: a patch lost at reboot
    doc = status.json()["data"]
    assert {a["host"]: a["state"] for a in doc["attention"]["hosts"]} == {"sim-02": "lost_at_reboot"}
    assert doc["cves"] == [
        {"cve": CVE, "covered": 2, "exposed": 1, "unknown": 1, "exposed_by_reason": {"lost_at_reboot": 1}}
    ]

    cves = cli("--db", url, "cves", "-o", "json")
    assert cves.code == 2, cves.err
    (summary,) = cves.json()["data"]
    assert summary["counts"] == {"covered": 2, "exposed": 1, "unknown": 1}
    assert summary["exposed_by_reason"] == {"lost_at_reboot": 1}
    one = cli("--db", url, "cve", CVE.lower(), "-o", "json").json()["data"]
    assert [(h["host"], h["reason"]) for h in one["hosts"]["exposed"]] == [("sim-02", "lost_at_reboot")]
    assert [(h["host"], h["reason"]) for h in one["hosts"]["unknown"]] == [("sim-03", f"no patch for {NEW_KERNEL}")]
    assert cli("--db", url, "cve", "fixed", CVE, "--kernel-release", NEW_KERNEL).code == 0
    assert cli("--db", url, "cve", CVE, "-o", "json").json()["data"]["counts"] == {
        "covered": 3,
        "exposed": 1,
        "unknown": 0,
    }

    dry = cli("--db", url, "reconcile", "--dry-run", "-o", "json")
    assert dry.code == 0, dry.err
    (plan,) = dry.json()["data"]
    assert [h["host"] for h in plan["hosts"]] == ["sim-02"] and plan["rollout"] is None
    assert plan["hosts"][0]["reason"].startswith("lost_at_reboot")
    assert plan["skipped"] == []  # sim-03 is superseded: this patch cannot load on its new kernel
    before = enable_count(tmp, "sim-02", PATCH)
    done = cli("--db", url, "reconcile", "--waves", "100%", "--wait", "-o", "json")
    assert done.code == 0, done.err
    assert enabled_on(tmp, "sim-02") == [PATCH] and enable_count(tmp, "sim-02", PATCH) == before + 1
    assert enabled_on(tmp, "sim-01") == [PATCH] and enable_count(tmp, "sim-01", PATCH) == 1  # not touched again
    assert states(db)["sim-02"] == "applied"
    assert cli("--db", url, "cves").code == 0
    assert cli("--db", url, "reconcile", "--dry-run", "-o", "json").json()["data"] == []

    reboot_host(tmp / "fleet" / "hosts" / "sim-02")  # reconcile kept it for boot, like any rollout
    assert enabled_on(tmp, "sim-02") == [PATCH]


def test_a_rollback_is_not_undone_by_reconcile_and_a_refusal_at_boot_is_a_refusal(cli, env):
    tmp, url, db = env
    roll_out(cli, url)
    assert cli("--db", url, "rollback", PATCH, "--hosts", "sim-04", "--fast").code == 0
    reboot_host(tmp / "fleet" / "hosts" / "sim-04")
    assert enabled_on(tmp, "sim-04") == []  # the rollback took it out of what is kept for boot

    with SimHost(sim_root(tmp, "sim-01")) as k:
        k.s["faults"]["refuse"] = [{"patch": "*", "object": "vmlinux", "errno": 16}]
    assert reboot_host(tmp / "fleet" / "hosts" / "sim-01")["results"][0]["klp_error"] == "refused"
    gather_fleet(db, tmp, "after-reboots")
    with db.session() as s:
        row = s.execute(
            select(HostPatch.state, HostPatch.error_code, HostPatch.errno, HostPatch.refused_object)
            .join(Host, Host.id == HostPatch.host_id)
            .where(Host.name == "sim-01")
        ).one()
    assert tuple(row) == ("refused", "refused", 16, "vmlinux")
    assert states(db)["sim-04"] == "absent"
    plan = cli("--db", url, "reconcile", "--dry-run", "-o", "json").json()["data"]
    assert [h["host"] for p in plan for h in p["hosts"]] == ["sim-01"]  # refused: retried; sim-04: rolled back

    # Rolled back from the whole fleet: nobody should have it, so reconcile leaves it alone unless asked by name.
    assert cli("--db", url, "rollback", PATCH, "--fast").code == 0
    with db.session.begin() as s:  # sim-01 had refused at boot: it still says so
        assert s.scalar(select(HostPatch.state).join(Host).where(Host.name == "sim-01")) == "refused"
    (plan,) = cli("--db", url, "reconcile", "--dry-run", "-o", "json").json()["data"]
    assert plan["hosts"] == [] and "rolled back from the whole fleet" in plan["skipped"][0]["reason"]
    (plan,) = cli("--db", url, "reconcile", "--patch", PATCH, "--dry-run", "-o", "json").json()["data"]
    assert [h["host"] for h in plan["hosts"]] == ["sim-01"]


def test_reconcile_wait_tries_a_host_that_keeps_refusing_once_and_ends(cli, tmp_path, monkeypatch):
    """`reconcile --wait` over a host whose pre-patch callback always refuses: one rollout for it, then the loop
    ends with the refusal reported (it planned rollout after rollout against that host before)."""
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    refuse = {"sim-02": {"refuse": {"patch": "*", "object": "vmlinux", "errno": "ENODEV"}}}
    db = fleet_db(tmp_path, url, hosts=2, faults=refuse)
    ko = write_ko(normalize({"name": PATCH, "objects": [{"name": "vmlinux", "funcs": ["f"]}]}), tmp_path / "p.ko")
    with db.session.begin() as s:
        add_patch(s, ko)
    rid = cli("--db", url, "rollout", "create", PATCH, "--waves", "100%", "--max-refused", "100%", "-o", "json")
    assert cli("--db", url, "rollout", "start", str(rid.json()["data"]["id"]), "--wait").code == 0
    assert states(db) == {"sim-01": "applied", "sim-02": "refused"}

    # A process of its own with a timeout: on the code before, this loop never ended.
    again = run_klpfleet("--db", url, "reconcile", "--wait", "--waves", "100%", "--max-refused", "100%", timeout=180)
    assert again.returncode == 0, again.stderr
    with db.session() as s:
        rollouts = list(s.scalars(select(Event.rollout_id).where(Event.kind == "rollout.completed")))
    assert len(rollouts) == 2  # the first rollout, and one reconcile rollout: sim-02 was tried once
    assert enable_count(tmp_path, "sim-02", PATCH) == 2 and states(db)["sim-02"] == "refused"
    assert f"left: sim-02 without {PATCH} (" in again.stderr and "tried 1 time" in again.stderr
    assert "--max-passes 2` tries them again" in again.stderr

    twice = run_klpfleet(
        "--db", url, "reconcile", "--wait", "--max-passes", "2", "--waves", "100%", "--max-refused", "100%", timeout=180
    )
    assert twice.returncode == 0, twice.stderr
    assert enable_count(tmp_path, "sim-02", PATCH) == 4  # two more tries, then the end
    assert "tried 2 times" in twice.stderr
