"""Pre-flight verdicts against what the simulated kernels then do, and the function map against their sysfs."""

import pytest
from sqlalchemy import select

from klpfleet.db.models import Event

from .controllerhelpers import enabled_on, fleet_db, gather_fleet, register

pytestmark = pytest.mark.ansible
PATCH = "livepatch_cve_2026_1234"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    return tmp_path, f"sqlite:///{tmp_path / 'k.db'}"


def test_preflight_predicts_what_the_kernel_then_does(cli, env):
    tmp, url = env
    faults = {"sim-02": {"sig_enforce": True}, "sim-03": {"lockdown": "integrity"}}
    db = fleet_db(tmp, url, hosts=4, faults=faults)
    register(db, tmp, PATCH)  # unsigned
    register(db, tmp, "livepatch_signed", signed=True, objects=[{"name": "vmlinux", "funcs": ["other_func"]}])

    checked = cli("--db", url, "patch", "check", PATCH, "-o", "json")
    assert checked.code == 1, checked.err  # some host would refuse
    verdicts = {v["host"]: v for v in checked.json()["data"]["verdicts"]}
    assert verdicts["sim-02"]["klp_error"] == "signature_rejected"
    assert verdicts["sim-03"]["klp_error"] == "lockdown"
    assert "sim-01" not in verdicts and "sim-04" not in verdicts  # ok (listed with --all)
    assert cli("--db", url, "patch", "check", "livepatch_signed").code == 0

    # --no-preflight plans every host; what the kernels do is what was predicted.
    created = cli("--db", url, "rollout", "create", PATCH, "--no-preflight", "--max-failed", "100%", "-o", "json")
    assert created.code == 0, created.err
    plan = created.json()["data"]
    assert sorted(h for w in plan["waves"] for h in w["hosts"]) == ["sim-01", "sim-02", "sim-03", "sim-04"]
    rid = plan["id"]
    cli("--db", url, "rollout", "start", str(rid), "--wait")
    status = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    seen = {h["host"]: h.get("error_code") for w in status["waves"] for h in w["hosts"]}
    assert seen["sim-02"] == "signature_rejected" and seen["sim-03"] == "lockdown"
    assert seen["sim-01"] is None and seen["sim-04"] is None
    assert PATCH in enabled_on(tmp, "sim-01") and PATCH not in enabled_on(tmp, "sim-02")

    # reconcile wants the refused hosts back; its pre-flight leaves them out with the reason, and plans nothing.
    wanted = cli("--db", url, "reconcile", "--dry-run", "-o", "json").json()["data"]
    assert sorted(h["host"] for p in wanted for h in p["hosts"]) == ["sim-02", "sim-03"]
    again = cli("--db", url, "reconcile", "-o", "json")
    assert again.code == 0, again.err
    record = next(p for p in again.json()["data"] if p["patch"] == PATCH)
    assert record["rollout"] is None and record["hosts"] == []
    skipped = {h["host"]: h["reason"] for h in record["skipped"]}
    assert "signature" in skipped["sim-02"] and "locked down" in skipped["sim-03"]


def test_live_check_probes_the_hosts_first(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=2, faults={"sim-02": {"sig_enforce": True}}, gather=False)
    register(db, tmp, PATCH)
    unknown = cli("--db", url, "patch", "check", PATCH, "-o", "json").json()["data"]
    assert {v["verdict"] for v in unknown["verdicts"]} == {"unknown"}  # never read: nothing is guessed
    live = cli("--db", url, "patch", "check", PATCH, "--live", "-o", "json")
    assert live.code == 1, live.err
    assert [(v["host"], v["klp_error"]) for v in live.json()["data"]["verdicts"]] == [("sim-02", "signature_rejected")]


def test_rollout_leaves_out_hosts_that_would_refuse_and_records_why(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=3, faults={"sim-03": {"sig_enforce": True}})
    register(db, tmp, PATCH)
    created = cli("--db", url, "rollout", "create", PATCH, "-o", "json")
    assert created.code == 0, created.err
    plan = created.json()["data"]
    assert [h for w in plan["waves"] for h in w["hosts"]] == ["sim-01", "sim-02"]
    assert [e["host"] for e in plan["excluded"]] == ["sim-03"]
    assert "signature" in plan["excluded"][0]["reason"]
    with db.session() as s:
        excluded = s.scalars(select(Event).where(Event.kind == "preflight.excluded")).all()
        assert [(e.host_name, e.rollout_id, e.details["klp_error"]) for e in excluded] == [
            ("sim-03", plan["id"], "signature_rejected")
        ]
    shown = cli("--db", url, "rollout", "status", str(plan["id"]), "-o", "json").json()["data"]["preflight"]
    assert [(v["host"], v["excluded"], v["klp_error"]) for v in shown] == [("sim-03", True, "signature_rejected")]
    assert "left out" in cli("--db", url, "rollout", "status", str(plan["id"])).out
    assert cli("--db", url, "status", "-o", "json").json()["data"]["preflight_excluded"] == 1
    # Every host refusing: nothing is planned, one line says why.
    db2 = fleet_db(tmp / "b", f"sqlite:///{tmp / 'b.db'}", hosts=1, faults={"sim-01": {"lockdown": "integrity"}})
    register(db2, tmp / "b", PATCH)
    nobody = cli("--db", f"sqlite:///{tmp / 'b.db'}", "rollout", "create", PATCH)
    assert nobody.code == 2 and "pre-flight" in nobody.err and "Traceback" not in nobody.err


def test_states_and_stacking_are_predicted_and_the_map_shows_the_stack(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=2)
    vmlinux = [{"name": "vmlinux", "funcs": ["cmdline_proc_show"]}]
    register(db, tmp, "klp_state_v2", replace=True, states=[{"id": 1, "version": 2}], objects=vmlinux)
    register(db, tmp, "klp_state_v1", replace=True, states=[{"id": 1, "version": 1}], objects=vmlinux)
    register(db, tmp, "klp_stack_a", objects=vmlinux)
    register(db, tmp, "klp_stack_b", objects=vmlinux)

    def roll(patch, *extra):
        created = cli("--db", url, "rollout", "create", patch, "--hosts", "sim-01", *extra, "-o", "json")
        assert created.code == 0, created.err
        assert cli("--db", url, "rollout", "start", str(created.json()["data"]["id"]), "--wait").code == 0

    roll("klp_state_v2")
    older = cli("--db", url, "patch", "check", "klp_state_v1", "--hosts", "sim-01", "-o", "json")
    assert older.code == 1 and older.json()["data"]["verdicts"][0]["klp_error"] == "incompatible_state"
    # What the kernel does with it, planned anyway: refused with the predicted error, v2 kept.
    created = cli(
        "--db", url, "rollout", "create", "klp_state_v1", "--hosts", "sim-01", "--no-preflight", "--max-failed", "1",
        "-o", "json",
    )  # fmt: skip
    cli("--db", url, "rollout", "start", str(created.json()["data"]["id"]), "--wait")
    status = cli("--db", url, "rollout", "status", str(created.json()["data"]["id"]), "-o", "json").json()["data"]
    assert status["waves"][0]["hosts"][0]["error_code"] == "incompatible_state"
    assert enabled_on(tmp, "sim-01") == ["klp_state_v2"]

    # Two non-replace patches on the same function: the second is warned about, refused with --require-replace.
    roll("klp_stack_a")
    warned = cli("--db", url, "patch", "check", "klp_stack_b", "--hosts", "sim-01", "-o", "json")
    assert warned.code == 0
    reasons = warned.json()["data"]["verdicts"][0]["reasons"]
    assert any(r["code"] == "stacks" and "vmlinux:cmdline_proc_show,1" in r["functions"] for r in reasons)
    strict = cli("--db", url, "patch", "check", "klp_stack_b", "--hosts", "sim-01", "--require-replace")
    assert strict.code == 1
    roll("klp_stack_b")
    gather_fleet(db, tmp, "gather-2")
    shown = cli("--db", url, "functions", "sim-01", "-o", "json").json()["data"]
    row = next(r for r in shown if r["function"] == "cmdline_proc_show")
    # Top of the stack first: the last enabled is in effect (the simulated 6.1 kernel: module load order).
    assert row["patches"] == ["klp_stack_b", "klp_stack_a", "klp_state_v2"]
    assert row["in_effect"] == "klp_stack_b" and row["functions_source"] == "sysfs"
    assert row["stack_order_source"] == "module_load_order"
    fleet = cli("--db", url, "functions", "--stacked", "-o", "json").json()["data"]
    assert [(r["function"], r["hosts"]) for r in fleet] == [("cmdline_proc_show", 1)]
    assert cli("--db", url, "functions", "nohost").code == 2


def test_patch_show_lists_what_the_ko_patches(cli, env):
    tmp, url = env
    db = fleet_db(tmp, url, hosts=1, gather=False)
    register(
        db,
        tmp,
        PATCH,
        states=[{"id": 7, "version": 3}],
        objects=[
            {"name": "vmlinux", "funcs": ["tcp_send_challenge_ack"], "callbacks": {"pre_patch": {}}},
            {"name": "ext4", "funcs": ["ext4_fill_super", "ext4_iget"]},
        ],
    )
    shown = cli("--db", url, "patch", "show", PATCH, "-o", "json").json()["data"][0]
    assert shown["contents"]["format"] == "klpfleet-sim"
    assert shown["contents"]["objects"]["ext4"] == [
        {"function": "ext4_fill_super", "sympos": 0},
        {"function": "ext4_iget", "sympos": 0},
    ]
    assert shown["contents"]["callbacks"] == {"vmlinux": ["pre_patch"]}
    assert shown["contents"]["states"] == [{"id": 7, "version": 3}]
    assert shown["signed"] is False
    text = cli("--db", url, "patch", "show", PATCH).out
    assert "ext4_iget" in text and "unsigned" in text


def test_reboot_debt_is_listed_with_since_and_why_and_exported(cli, env):
    from .ansiblehelpers import ROOT, playbook

    tmp, url = env
    old = "5.10.0-32-amd64"  # a kernel that pins every patch present when a transition is forced
    db = fleet_db(tmp, url, hosts=2, faults={"sim-01": {"stall": {"function": "*", "seconds": "forever"}}},
                  kernel_release=old)  # fmt: skip
    patch = register(db, tmp, PATCH, kernel_release=old)
    forced = playbook(
        tmp / "fleet" / "inventory.yml", ROOT / "playbooks" / "apply.yml", "-e", f"klp_patch_src={patch.path}",
        "-e", f"klp_patch_sha256={patch.sha256}", "-e", "klp_transition_timeout=2", "-e", "klp_on_stall=force",
        "-e", "klp_allow_force=true", "--limit", "sim-01", db_url=url,
    )  # fmt: skip
    assert forced.returncode == 0, forced.stdout
    owed = cli("--db", url, "hosts", "--reboot-required", "-o", "json").json()["data"]
    assert [h["host"] for h in owed] == ["sim-01"]
    assert owed[0]["reasons"][0]["state"] == "forced" and "forced transition" in owed[0]["reasons"][0]["why"]
    assert owed[0]["since"]
    status = cli("--db", url, "status", "-o", "json").json()["data"]
    assert status["reboot_required"]["total"] == 1
    metrics = cli("--db", url, "metrics").out
    assert "klpfleet_hosts_reboot_required 1.0" in metrics
    assert 'klpfleet_host_reboot_required_since_seconds{host="sim-01"}' in metrics
    # The pre-flight of another patch there says a reboot is owed (a warning: the kernel would take it).
    register(db, tmp, "livepatch_other", kernel_release=old, objects=[{"name": "vmlinux", "funcs": ["other_func"]}])
    checked = cli("--db", url, "patch", "check", "livepatch_other", "--hosts", "sim-01", "-o", "json")
    assert "reboot_debt" in [r["code"] for r in checked.json()["data"]["verdicts"][0]["reasons"]]


def test_forged_rows_are_not_believed(cli, env):
    from sqlalchemy import update

    from klpfleet.db.models import HostPatch, Patch

    tmp, url = env
    db = fleet_db(tmp, url, hosts=1)
    register(db, tmp, "klp_below", replace=False)
    register(db, tmp, "klp_above", replace=True, states=[{"id": 1, "version": 1}])
    created = cli("--db", url, "rollout", "create", "klp_below", "-o", "json").json()["data"]
    assert cli("--db", url, "rollout", "start", str(created["id"]), "--wait").code == 0
    with db.session.begin() as s:  # what a compromised database writer could leave
        s.execute(update(Patch).where(Patch.name == "klp_below").values(contents={"objects": "x", "states": [{}]}))
        s.execute(update(HostPatch).values(functions={"vmlinux": ["$(reboot),1", "ok_func,1"], "../x": ["f,1"]}))
    checked = cli("--db", url, "patch", "check", "klp_above", "-o", "json")
    assert checked.code == 0 and "Traceback" not in checked.err
    reasons = checked.json()["data"]["verdicts"][0]["reasons"]
    assert "contents_unknown" in [r["code"] for r in reasons]  # the installed patch's states: not known, said so
    shown = cli("--db", url, "functions", "sim-01", "-o", "json").json()["data"]
    assert [(r["object"], r["function"]) for r in shown] == [("vmlinux", "ok_func")]
    assert cli("--db", url, "patch", "show", "klp_below").code == 0
