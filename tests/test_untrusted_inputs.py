"""Security, second round: what comes back from hosts, from execution nodes and from klpfleet's own database is
untrusted input too. Each test here failed on 0.6.0 (docs/security.md names the attack it answers)."""

from __future__ import annotations

import json
import os
import time

import pytest
from sqlalchemy import func, select, text

from klpfleet.db.models import Event, Host, HostPatch, Patch
from klpfleet.hoststate.recorder import Recorder

from .conftest import ROOT, run_klpfleet
from .controllerhelpers import enabled_on, fleet_db, register, sim_root

PATCH = "livepatch_cve_2026_1234"


def template(marker) -> str:
    return "x{{ lookup('pipe', 'touch " + str(marker) + "') }}"


def rollout(url: str, *args: str, env: dict[str, str] | None = None):
    created = run_klpfleet("--db", url, "rollout", "create", *args, "--waves", "100%", "-o", "json")
    assert created.returncode == 0, created.stderr
    rid = json.loads(created.stdout)["data"]["id"]
    return rid, run_klpfleet("--db", url, "rollout", "start", str(rid), "--wait", env=env, timeout=300)


# ------------------------------------------------------------------ X1: database values


@pytest.mark.ansible
@pytest.mark.parametrize("column", ["name", "sha256"])
def test_hostile_patch_rows_never_become_code_or_a_run(tmp_path, any_db_url, column, monkeypatch):
    """Whoever can write the database (another controller, a recorder credential) writes a template into a
    patch's name or sha256: no rollout runs it; the run is refused in one line before any host is touched."""
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    marker = tmp_path / "PWNED"
    db = fleet_db(tmp_path, any_db_url, hosts=2)
    register(db, tmp_path)
    created = run_klpfleet("--db", any_db_url, "rollout", "create", PATCH, "--waves", "100%", "-o", "json")
    assert created.returncode == 0, created.stderr
    rid = json.loads(created.stdout)["data"]["id"]
    hostile = template(marker) if column == "name" else ("{{ lookup('pipe', 'touch PWNED-sha') }}" + "0" * 64)[:64]
    with db.engine.begin() as conn:  # sha256 is 64 characters wide on PostgreSQL: a template fits
        conn.execute(text(f"UPDATE patches SET {column} = :v"), {"v": hostile})
    started = run_klpfleet("--db", any_db_url, "rollout", "start", str(rid), "--wait", timeout=300)
    assert started.returncode == 1 and "Traceback" not in started.stderr, started.stderr
    status = json.loads(run_klpfleet("--db", any_db_url, "rollout", "status", str(rid), "-o", "json").stdout)["data"]
    assert status["status"] == "paused", status
    assert "refused to start a run" in status["pause_reason"]
    assert "not a kernel module name" in status["pause_reason"] or "64 hex digits" in status["pause_reason"]
    assert not marker.exists() and not list(tmp_path.rglob("PWNED*"))
    assert enabled_on(tmp_path, "sim-01") == [] and enabled_on(tmp_path, "sim-02") == []


@pytest.mark.ansible
def test_a_patch_path_in_the_database_is_never_what_is_shipped(tmp_path, sqlite_url, monkeypatch):
    """`patches.path` pointed at another file: the run ships the registry's own kept copy (derived from name and
    sha256, its content checked), never what the row names."""
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    db = fleet_db(tmp_path, sqlite_url, hosts=2)
    register(db, tmp_path)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE patches SET path = '/etc/passwd'"))
    _, started = rollout(sqlite_url, PATCH)
    assert started.returncode == 0, started.stdout + started.stderr
    assert enabled_on(tmp_path, "sim-01") == [PATCH]


def test_a_kept_copy_that_changed_is_refused(tmp_path, sqlite_db):
    from klpfleet.runs.variables import RunVarsError, patch_vars

    patch = register(sqlite_db, tmp_path)
    kept = patch_vars(patch.name, patch.sha256)["klp_patch_src"]
    os.chmod(kept, 0o644)
    with open(kept, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(RunVarsError, match="other content"):
        patch_vars(patch.name, patch.sha256)


@pytest.mark.ansible
def test_extra_vars_reach_ansible_as_data(tmp_path, sqlite_url):
    """Every extra var klpfleet passes is unsafe text: a template in one arrives as its literal text."""
    from klpfleet.controller.playbook import run_playbook
    from klpfleet.inventory.export import fleet_inventory
    from klpfleet.runs.engine import resolve
    from klpfleet.runs.types import RunRequest

    marker = tmp_path / "PWNED"
    db = fleet_db(tmp_path, sqlite_url, hosts=1, gather=False)
    out = tmp_path / "out"
    run = run_playbook(
        RunRequest(
            db=db,
            playbook=str(ROOT / "tests" / "playbooks" / "echo_var.yml"),
            records=fleet_inventory(db),
            extravars={"probe_value": template(marker), "probe_out": str(out)},
            runs_in=tmp_path / "runs",
            ident="echo",
            forks=1,
            engine=resolve("ansible"),
        )
    )
    assert run.status == "successful"
    assert (tmp_path / "out-sim-01").read_text() == template(marker)
    assert not marker.exists()


# ------------------------------------------------------------------ X2, X3: names a host reports


def rename_on_host(tmp_path, host: str, old: str, new: str) -> None:
    """The host's kernel reports the patch `old` under the name `new` (a compromised host can say anything)."""
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost

    with SimHost(sim_root(tmp_path, host)) as k:
        for p in k.s["patches"]:
            if p["name"] == old:
                p["name"] = new
        modules = k.s["modules"]
        if old in modules:
            module = modules.pop(old)
            module["name"] = new
            modules[new] = module
        for p in k.s["patches"]:
            if p.get("module") == old:
                p["module"] = new


@pytest.mark.ansible
@pytest.mark.parametrize("hostile", ["template", "not a name;id", "livepatch_by_hand"])
def test_names_a_host_reports_never_reach_a_run(tmp_path, sqlite_url, hostile, monkeypatch):
    """`rollback --cascade` removes what sits above the patch; the names come from the host. A template, a name no
    module can have, or a patch nobody registered there never reaches remove.yml: that host is left alone with
    one clear answer, the others are rolled back. (The simulated kernel's sysfs cannot hold a `/` in a name, as a
    real one cannot; a result that claims one is covered by the sanitizer's test below.)"""
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    name = "x{{ lookup('pipe', 'touch PWNED-cascade') }}" if hostile == "template" else hostile
    db = fleet_db(tmp_path, sqlite_url, hosts=2)
    register(db, tmp_path)
    register(db, tmp_path, "livepatch_newer", objects=[{"name": "vmlinux", "funcs": ["other_function"]}])
    for patch in (PATCH, "livepatch_newer"):
        _, started = rollout(sqlite_url, patch)
        assert started.returncode == 0, started.stdout + started.stderr
    if hostile == "livepatch_by_hand":  # loaded on top by hand, never registered
        from ansible_collections.klpfleet.livepatch.plugins.module_utils._operations import apply_patch
        from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import primitives_for

        from .simhelpers import build

        ko = build(tmp_path, name, objects=[{"name": "vmlinux", "funcs": ["third_function"]}])
        apply_patch(primitives_for("sim", sim_root(tmp_path, "sim-01")), ko, name=name, transition_timeout=5)
    else:
        rename_on_host(tmp_path, "sim-01", "livepatch_newer", name)
    result = run_klpfleet("--db", sqlite_url, "rollback", PATCH, "--cascade", "-o", "json", timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    answers = {a["host"]: a for a in json.loads(result.stdout)["data"]}
    assert answers["sim-01"]["result"] in ("failed", "stacked"), answers
    assert "not kernel module names" in answers["sim-01"]["detail"] or "not registered" in answers["sim-01"]["detail"]
    assert answers["sim-02"]["result"] == "removed" and answers["sim-02"]["removed"] == ["livepatch_newer", PATCH]
    assert list(tmp_path.rglob("PWNED*")) == []
    assert enabled_on(tmp_path, "sim-02") == []
    assert PATCH in enabled_on(tmp_path, "sim-01")  # untouched


def test_cascade_removes_only_registered_patches():
    from klpfleet.controller.rollback import STACKED, decide

    facts = {"patches": [{"name": "a"}, {"name": "by_hand"}, {"name": "b"}]}
    answer, plan = decide("h", facts, "a", cascade=True, registered={"a", "b"})
    assert plan == [] and answer is not None and answer.result == STACKED and "by_hand" in answer.detail
    answer, plan = decide("h", facts, "a", cascade=True, registered={"a", "b", "by_hand"})
    assert answer is None and plan == ["b", "by_hand", "a"]


# ------------------------------------------------------------------ F9b: module results


def test_a_hostile_module_result_is_capped_and_its_codes_checked(tmp_path, sqlite_db, ko_factory):
    """One result with 20,000 stalled tasks, 100,000 objects, a 1 MB message and an unknown klp_error: what is
    stored is bounded, the code is a known failure, and the event says the result was sanitized."""
    from klpfleet.registry.patches import add_patch

    with sqlite_db.session.begin() as s:
        patch, _ = add_patch(s, ko_factory("livepatch_test"))
        sha = patch.sha256
    result = {
        "outcome": "stalled",
        "klp_error": "x{{ lookup('pipe', 'id') }}",
        "name": "livepatch_test",
        "msg": "m" * 1_000_000,
        "stalled_tasks": [{"pid": i, "comm": "t" * 5000, "stack": ["f"] * 500} for i in range(20_000)],
        "patch": {"objects": {f"obj{i}": {"funcs": ["f"]} for i in range(100_000)}},
        "changed": False,
    }
    size = os.path.getsize(tmp_path / "klpfleet.db")
    started = time.monotonic()
    Recorder(sqlite_db).record_task_result(None, "web1", "klpfleet.livepatch.patch", "failed", result, {"sha256": sha})
    seconds = time.monotonic() - started
    with sqlite_db.session() as s:
        row = s.scalar(select(HostPatch))
        assert row.error_code == "insmod_failed" and row.state == "stalled"
        assert len(row.stalled_tasks) == 64 and all(len(t["comm"]) <= 4096 for t in row.stalled_tasks)
        event = s.scalars(select(Event).where(Event.kind == "patch.state")).one()
    assert os.path.getsize(tmp_path / "klpfleet.db") - size < 2_000_000
    assert seconds < 30  # bounded work; the figure is not a benchmark
    assert event.details is not None


def test_many_refused_module_loads_are_recorded_once_each_and_capped(sqlite_db, ko_factory):
    from klpfleet.registry.patches import add_patch

    with sqlite_db.session.begin() as s:
        add_patch(s, ko_factory("livepatch_test"))
    refusals = [{"patch": "livepatch_test", "module": f"mod{i}", "seq": i} for i in range(5000)]
    facts = {"kernel_release": "6.1.0-56-amd64", "patches": [], "refused_module_loads": refusals}
    recorder = Recorder(sqlite_db)
    for _ in range(2):  # the second report of the same records adds nothing
        recorder.record_task_result(None, "web1", "klpfleet.livepatch.patch_info", "ok", facts)
    with sqlite_db.session() as s:
        count = s.scalar(select(func.count(Event.id)).where(Event.kind == "module.load_refused"))
    assert count == 100


def test_a_result_naming_patches_no_kernel_could_load_is_marked(tmp_path, sqlite_db):
    from klpfleet.hoststate.module_results import sanitize

    clean = sanitize(
        {
            "patches": [{"name": "good_one"}, {"name": "x/../../y"}, {"name": "{{ x }}"}],
            "replaced": ["ok", "../etc"],
            "outcome": "owned",
            "klp_error": None,
        }
    )
    assert [p["name"] for p in clean["patches"]] == ["good_one"] and clean["replaced"] == ["ok"]
    assert clean["outcome"] == "failed" and set(clean["klp_sanitized"]) == {"patches", "replaced", "outcome"}
    from klpfleet.controller.rollback import FAILED, decide

    answer, plan = decide("h", clean, "good_one", cascade=True, registered={"good_one"})
    assert plan == [] and answer is not None and answer.result == FAILED


def test_a_host_that_reports_a_ghost_creates_no_host(tmp_path, sqlite_db):
    """A result names only the task's host: a host name that no inventory could hold is never created."""
    Recorder(sqlite_db).record_task_result(None, "ghost;rm -rf /", "klpfleet.livepatch.patch_info", "ok", {})
    with sqlite_db.session() as s:
        assert s.scalar(select(func.count(Host.id))) == 0
        assert s.scalar(select(func.count(Patch.id))) == 0
