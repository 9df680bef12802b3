"""Blocking a patch found bad: no rollout, resume or reconcile of it starts, its rollouts pause (a running one at
its next safe point), `--rollback` takes it off every host, and the next gather or apply on a host takes it out
of the boot manifest, so no reboot loads it again. Real gather, rollout and rollback runs on a simulated fleet."""

import json
import os
import time

import pytest
from sqlalchemy import select, update

from ansible_collections.klpfleet.livepatch.plugins.module_utils import _persist as persist
from klpfleet.db.models import Event, HostPatch, Patch, utcnow
from klpfleet.sim.fleet import reboot_host

from .ansiblehelpers import ROOT, playbook
from .controllerhelpers import enabled_on, fleet_db, gather_fleet, register, sim_root
from .simhelpers import RELEASE

pytestmark = pytest.mark.ansible
PATCH = "livepatch_cve_2026_1234"
OTHER = "livepatch_cve_2026_5678"
REASON = "INC-4411: soft lockups in nfsd after the load"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=4)
    register(db, tmp_path, PATCH)
    return tmp_path, url, db


@pytest.fixture
def registry(tmp_path):
    """The patch registered and the hosts imported, none of them read yet: enough for what touches no host."""
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=2, gather=False)
    register(db, tmp_path, PATCH)
    return tmp_path, url, db


def roll_out(cli, url, patch=PATCH, *args):
    created = cli("--db", url, "rollout", "create", patch, "--transition-timeout", "2s", *args, "-o", "json")
    assert created.code == 0, created.err
    rid = created.json()["data"]["id"]
    started = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert started.code == 0, started.err
    return rid


def kept(tmp, host):
    directory = os.path.join(sim_root(tmp, host), "boot")
    return [e["name"] for e in persist.manifest(directory, RELEASE)] if os.path.isdir(directory) else []


def event_rows(db, kind):
    with db.session() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def test_a_blocked_patch_is_refused_by_rollout_create_until_unblocked(cli, env):
    _tmp, url, db = env
    blocked = cli("--db", url, "patch", "block", PATCH, "--reason", REASON)
    assert blocked.code == 0, blocked.err
    assert f"blocked: patch {PATCH}@" in blocked.err and REASON in blocked.err

    refused = cli("--db", url, "rollout", "create", PATCH)
    assert refused.code == 1 and "Traceback" not in refused.err
    line = refused.err.strip()
    assert len(line.splitlines()) == 1 and REASON in line and "pytest" in line and "patch unblock" in line
    assert cli("--db", url, "rollout", "list", "-o", "json").json()["data"] == []

    again = cli("--db", url, "patch", "block", PATCH, "--reason", "a second opinion")
    assert again.code == 0 and "already blocked" in again.err and REASON in again.err  # the first block stands
    shown = cli("--db", url, "patch", "show", PATCH, "-o", "json").json()["data"][0]["blocked"]
    assert (shown["by"], shown["reason"]) == ("pytest", REASON)
    listed = cli("--db", url, "patch", "list")
    assert "BLOCKED" in listed.out

    assert cli("--db", url, "patch", "unblock", PATCH).code == 0
    assert cli("--db", url, "patch", "show", PATCH, "-o", "json").json()["data"][0]["blocked"] is None
    assert cli("--db", url, "rollout", "create", PATCH).code == 0
    (block_event,) = event_rows(db, "patch.blocked")
    (unblock_event,) = event_rows(db, "patch.unblocked")
    assert (block_event.actor, block_event.details["reason"]) == ("pytest", REASON)
    assert unblock_event.details["was"]["reason"] == REASON


@pytest.mark.parametrize(
    ("reason", "said"),
    [("  ", "--reason is empty"), ("two\nlines", "one line of printable text"), ("x" * 501, "at most 500")],
)
def test_a_reason_is_one_printable_line_of_bounded_size(cli, registry, reason, said):
    _tmp, url, db = registry
    result = cli("--db", url, "patch", "block", PATCH, "--reason", reason)
    assert result.code == 2 and said in result.err and len(result.err.strip().splitlines()) == 1
    with db.session() as s:
        assert s.scalar(select(Patch.blocked_at)) is None  # nothing written


def test_blocking_pauses_planned_rollouts_and_resume_and_promote_refuse(cli, env):
    tmp, url, db = env
    rid = cli("--db", url, "rollout", "create", PATCH, "-o", "json").json()["data"]["id"]
    blocked = cli("--db", url, "patch", "block", PATCH, "--reason", REASON)
    assert f"paused rollout {rid}" in blocked.err
    data = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    assert data["status"] == "paused" and REASON in data["pause_reason"]
    for verb in ("resume", "promote"):
        refused = cli("--db", url, "rollout", verb, str(rid), "--wait")
        assert refused.code == 1 and REASON in refused.err, (verb, refused.err)
    assert cli("--db", url, "rollout", "start", str(rid)).code == 2  # not planned any more
    assert all(enabled_on(tmp, f"sim-0{i}") == [] for i in range(1, 5))  # no host was touched
    pause = event_rows(db, "rollout.pause_requested")
    assert [(e.rollout_id, e.actor) for e in pause] == [(rid, "pytest")]
    assert cli("--db", url, "rollout", "abort", str(rid)).code == 0  # stopping it is always allowed


def test_a_running_rollout_pauses_at_its_next_safe_point(cli, env):
    tmp, url, db = env
    created = cli("--db", url, "rollout", "create", PATCH, "--waves", "1,100%", "--bake", "60s", "-o", "json")
    rid = created.json()["data"]["id"]
    assert cli("--db", url, "rollout", "start", str(rid)).code == 0  # a driver of its own, in the background
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the canary applied: the driver bakes
        with db.session() as s:
            if s.scalar(select(HostPatch.id).where(HostPatch.state == "applied")):
                break
        time.sleep(0.5)
    else:
        pytest.fail("the first wave never finished")
    blocked = cli("--db", url, "patch", "block", PATCH, "--reason", REASON, "--rollback")
    assert blocked.code == 0, blocked.err
    assert "waiting for the running rollouts' drivers" in blocked.err
    data = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    assert data["status"] == "paused" and REASON in data["pause_reason"]
    on = {f"sim-0{i}": enabled_on(tmp, f"sim-0{i}") for i in range(1, 5)}
    assert all(v == [] for v in on.values()), (on, blocked.err, blocked.out)  # the canary's load rolled back, no other
    with db.session() as s:
        applied = s.scalars(select(HostPatch.state).where(HostPatch.state == "applied")).all()
    assert applied == []


def test_reconcile_leaves_a_blocked_patch_out(cli, env):
    tmp, url, db = env
    roll_out(cli, url)
    reboot_host(tmp / "fleet" / "hosts" / "sim-01", boot_loader=False)  # the patch is lost there
    gather_fleet(db, tmp, "after-reboot")
    planned = cli("--db", url, "reconcile", "--dry-run", "-o", "json").json()["data"]
    assert [h["host"] for h in planned[0]["hosts"]] == ["sim-01"]

    assert cli("--db", url, "patch", "block", PATCH, "--reason", REASON).code == 0
    planned = cli("--db", url, "reconcile", "--dry-run", "-o", "json").json()["data"]
    assert planned[0]["hosts"] == []
    (skipped,) = planned[0]["skipped"]
    assert skipped["host"] == "sim-01" and REASON in skipped["reason"]
    result = cli("--db", url, "reconcile")
    assert result.code in (0, 1) and enabled_on(tmp, "sim-01") == []


def test_the_next_gather_or_apply_takes_a_blocked_patch_out_of_the_boot_manifest(cli, env):
    tmp, url, db = env
    roll_out(cli, url)
    assert all(kept(tmp, f"sim-0{i}") == [PATCH] for i in range(1, 5))
    assert cli("--db", url, "patch", "block", PATCH, "--reason", REASON).code == 0

    status = cli("--db", url, "status", "-o", "json")
    assert status.code == 1  # a blocked patch still running on 4 hosts: degraded
    (entry,) = status.json()["data"]["blocked_patches"]
    assert (entry["patch"], entry["running_on"], entry["reason"]) == (PATCH, 4, REASON)
    table = cli("--db", url, "status")
    assert "blocked patches" in table.out and "4 hosts" in table.out
    metrics = cli("--db", url, "metrics")
    assert f'klpfleet_patch_blocked{{patch="{PATCH}",sha256="{entry["sha256"]}"}} 4.0' in metrics.out

    # A rollout of another patch applies it to two hosts: their apply drops the blocked one from the manifest.
    register(db, tmp, OTHER, objects=[{"name": "vmlinux", "funcs": ["other_function"]}])
    roll_out(cli, url, OTHER, "--hosts", "sim-01:sim-02")
    assert kept(tmp, "sim-01") == kept(tmp, "sim-02") == [OTHER]
    assert kept(tmp, "sim-03") == [PATCH]
    gather_fleet(db, tmp, "after-block")  # ...and a gather on the rest
    assert all(PATCH not in kept(tmp, f"sim-0{i}") for i in range(1, 5))
    assert not any(
        name.endswith(".ko") and name.startswith(entry["sha256"])
        for i in range(1, 5)
        for name in os.listdir(os.path.join(sim_root(tmp, f"sim-0{i}"), "boot", RELEASE))
    )
    dropped = event_rows(db, "boot.dropped")
    assert sorted(e.host_name for e in dropped) == ["sim-01", "sim-02", "sim-03", "sim-04"]
    assert all(e.details["blocked"] and e.details["kernel_release"] == RELEASE for e in dropped)
    assert enabled_on(tmp, "sim-03") == [PATCH]  # still running: only a rollback or a reboot takes it off

    reboot_host(tmp / "fleet" / "hosts" / "sim-03")
    reboot_host(tmp / "fleet" / "hosts" / "sim-01")
    assert enabled_on(tmp, "sim-03") == []
    assert enabled_on(tmp, "sim-01") == [OTHER]


def test_block_with_rollback_leaves_no_host_with_it_loaded_or_kept_after_a_reboot(cli, env):
    tmp, url, db = env
    roll_out(cli, url)
    result = cli("--db", url, "patch", "block", PATCH, "--reason", REASON, "--rollback", "-o", "json")
    assert result.code == 0, result.err
    doc = result.json()["data"]
    assert doc["newly_blocked"] and doc["block"]["reason"] == REASON
    assert sorted((r["host"], r["result"]) for r in doc["rollback"]) == [(f"sim-0{i}", "removed") for i in range(1, 5)]
    for i in range(1, 5):
        reboot_host(tmp / "fleet" / "hosts" / f"sim-0{i}")
    gather_fleet(db, tmp, "after-reboots")
    for i in range(1, 5):
        assert enabled_on(tmp, f"sim-0{i}") == [] and kept(tmp, f"sim-0{i}") == []
    status = cli("--db", url, "status", "-o", "json").json()["data"]
    assert status["blocked_patches"][0]["running_on"] == 0
    rollback = event_rows(db, "patch.rollback")
    assert len(rollback) == 1 and rollback[0].details["selector"] == "all"


def test_a_forged_block_row_is_bounded_and_reaches_no_terminal_as_control_text(cli, registry):
    _tmp, url, db = registry
    with db.session.begin() as s:  # as someone with the database's password could write it
        s.execute(
            update(Patch).values(
                blocked_at=utcnow(), blocked_by="m\x1b]0;owned\x07", blocked_reason="\x1b[2J" + "y" * 20000
            )
        )
    status = cli("--db", url, "status")
    assert "\x1b" not in status.out and "y" * 501 not in status.out
    doc = cli("--db", url, "status", "-o", "json").json()["data"]["blocked_patches"][0]
    assert len(doc["reason"]) == 500
    refused = cli("--db", url, "rollout", "create", PATCH)
    assert refused.code == 1 and "\x1b" not in refused.err and len(refused.err) < 1200
    assert json.loads(cli("--db", url, "patch", "show", PATCH, "-o", "json").out)["data"][0]["blocked"]


def test_an_operators_own_gather_through_the_inventory_plugin_drops_it_too(cli, env):
    tmp, url, db = env
    roll_out(cli, url)
    assert cli("--db", url, "patch", "block", PATCH, "--reason", REASON).code == 0
    # The sim fleet's static inventory knows nothing of blocks: a gather through it leaves the manifest alone.
    by_hand = playbook(tmp / "fleet" / "inventory.yml", ROOT / "playbooks" / "gather.yml", "--limit", "sim-01")
    assert by_hand.returncode == 0, by_hand.stdout[-2000:]
    assert kept(tmp, "sim-01") == [PATCH]
    config = tmp / "fleet.klpfleet.yml"
    config.write_text(f"plugin: klpfleet.livepatch.fleet\ndb: {url}\n")
    through_plugin = playbook(config, ROOT / "playbooks" / "gather.yml", "--limit", "sim-01:sim-02", db_url=url)
    assert through_plugin.returncode == 0, through_plugin.stdout[-2000:]
    assert kept(tmp, "sim-01") == kept(tmp, "sim-02") == [] and kept(tmp, "sim-03") == [PATCH]
    assert sorted(e.host_name for e in event_rows(db, "boot.dropped")) == ["sim-01", "sim-02"]  # the recorder's


def test_the_boot_manifest_module_drops_from_every_release_and_changes_nothing_in_check_mode(capsys, tmp_path):
    from ansible_collections.klpfleet.livepatch.plugins.modules import boot_manifest, patch

    from .simhelpers import build, sim_host
    from .test_collection_modules import run_module

    sim_host(tmp_path / "host")
    host = str(tmp_path / "host")
    first, second = build(tmp_path, "lp_first"), build(tmp_path, "lp_second")
    for ko in (first, second):
        assert run_module(patch, capsys, backend="sim", sim_root=host, src=ko)["persisted"]
    boot = os.path.join(host, "boot")
    older = os.path.join(boot, "6.1.0-55-amd64")  # a release the host booted before, kept for too
    os.makedirs(older, mode=0o700)
    with open(os.path.join(boot, RELEASE, "manifest.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(older, "manifest.json"), "w") as f:
        json.dump(dict(manifest, kernel_release="6.1.0-55-amd64"), f)
    sha = manifest["patches"][0]["sha256"]

    checked = run_module(
        boot_manifest, capsys, backend="sim", sim_root=host, drop=[sha.upper()], _ansible_check_mode=True
    )
    assert checked["changed"] and len(checked["dropped"]) == 2
    assert persist.manifest(boot, RELEASE)[0]["sha256"] == sha  # check mode: nothing written

    done = run_module(boot_manifest, capsys, backend="sim", sim_root=host, drop=[sha])
    assert sorted((d["name"], d["kernel_release"]) for d in done["dropped"]) == [
        ("lp_first", "6.1.0-55-amd64"),
        ("lp_first", RELEASE),
    ]
    assert [e["name"] for e in persist.manifest(boot, RELEASE)] == ["lp_second"]
    assert [e["name"] for e in persist.manifest(boot, "6.1.0-55-amd64")] == ["lp_second"]
    assert not os.path.exists(os.path.join(boot, RELEASE, sha + ".ko"))
    assert run_module(boot_manifest, capsys, backend="sim", sim_root=host, drop=[sha])["changed"] is False

    bad = run_module(boot_manifest, capsys, backend="sim", sim_root=host, drop=["../../etc/passwd"])
    assert bad["failed"] and bad["klp_error"] == "invalid_argument"
