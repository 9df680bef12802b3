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


# ------------------------------------------------------------------ D1, D2: the dashboard


def _http(server, path: str, *, method: str = "GET", headers: dict[str, str] | None = None):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body


def test_a_dashboard_with_a_token_serves_no_data_without_it(sqlite_db):
    from .test_dashboard import TOKEN, Server

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with Server(sqlite_db, token=TOKEN) as server:
        for path in ("/api/status", "/api/rollouts", "/api/rollouts/1", "/api/hosts/web1", "/api/events", "/metrics"):
            status, headers, _ = _http(server, path)
            assert status == 401 and headers.get("www-authenticate") == "Bearer", path
            assert _http(server, path, headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401, path
        assert _http(server, "/api/status", headers=bearer)[0] == 200
        assert _http(server, "/metrics", headers=bearer)[0] == 200
        status, _, page = _http(server, "/")  # the shell: no data in it
        assert status == 200 and b"sim-" not in page and _http(server, "/static/app.js")[0] == 200
        # The page's session: the token shown once gives an HttpOnly, SameSite=Strict cookie (EventSource sends no
        # headers); a made-up cookie gives nothing.
        assert _http(server, "/api/session", method="POST")[0] == 401
        status, headers, _ = _http(server, "/api/session", method="POST", headers=bearer)
        cookie = headers["set-cookie"]
        assert status == 200 and "HttpOnly" in cookie and "SameSite=strict" in cookie
        session = cookie.split(";", 1)[0]
        assert _http(server, "/api/status", headers={"Cookie": session})[0] == 200
        assert _http(server, "/api/status", headers={"Cookie": "klpfleet_session=" + "0" * 64})[0] == 401


def test_the_dashboard_answers_only_the_names_it_is_reached_by(sqlite_db):
    """DNS rebinding: a page on another site resolves its own name to 127.0.0.1 and reads the loopback dashboard;
    the Host header gives it away."""
    from .test_dashboard import Server

    with Server(sqlite_db, allowed_hosts=["klpfleet.example.com"]) as server:
        assert _http(server, "/api/status", headers={"Host": "rebind.attacker.example:8080"})[0] == 421
        assert _http(server, "/", headers={"Host": "rebind.attacker.example"})[0] == 421
        for name in (f"127.0.0.1:{server.port}", "localhost", "[::1]:8080", "klpfleet.example.com:443"):
            assert _http(server, "/api/status", headers={"Host": name})[0] == 200, name


def test_dashboard_ids_and_names_are_range_checked(sqlite_db):
    from .test_dashboard import TOKEN, Server

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with Server(sqlite_db, token=TOKEN, allow_actions=True) as server:
        for path in ("/api/rollouts/99999999999999999999", "/api/rollouts/0", "/api/hosts/a%0Ab", "/api/hosts/%3Bid"):
            assert _http(server, path, headers=bearer)[0] == 404, path
        huge = "/api/rollouts/99999999999999999999/pause"
        assert _http(server, huge, method="POST", headers={**bearer, "X-CSRF-Token": "x"})[0] in (403, 404)


def test_dashboard_event_streams_are_capped(sqlite_db):
    import http.client

    from klpfleet.dashboard.app import MAX_STREAMS

    from .test_dashboard import Server

    with Server(sqlite_db) as server:
        opened = []
        for _ in range(MAX_STREAMS):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/api/events")
            assert conn.getresponse().status == 200
            opened.append(conn)
        assert _http(server, "/api/events")[0] == 503
        assert _http(server, "/api/status")[0] == 200  # the rest of the dashboard still answers
        for conn in opened:
            conn.close()
        deadline = time.monotonic() + 30
        while _http(server, "/api/status")[0] == 200:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/api/events")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                break  # closed streams were counted out
            assert time.monotonic() < deadline, "closed event streams were never counted out"
            time.sleep(0.5)


# ------------------------------------------------------------------ F10: credentials in kept vars


@pytest.mark.parametrize(
    "line",
    [
        'web9 klp_patch_params=\'{"db_password": "pw-4411"}\'',
        'web9 klp_patch_params=\'{"opts": [{"nested": {"api_token": "pw-4412"}}]}\'',
        "web9 ansible_ssh_common_args='-o ProxyCommand=\"connect --password pw-4413 jump\"'",
        "web9 ansible_ssh_extra_args='-o ProxyCommand=\"curl https://user:pw-4414@proxy/\"'",
        "web9 ansible_ssh_common_args='-o SetEnv=\"Authorization: Bearer pw-4415\"'",
        "web9 ansible_ssh_common_args='-o SetEnv=AWS_SECRET_ACCESS_KEY=pw-4416'",
        'web9 klp_patch_params=\'{"mode": "token: pw-4417"}\'',
    ],
)
def test_credentials_anywhere_in_a_kept_value_refuse_the_import(tmp_path, cli, sqlite_db, sqlite_url, line):
    """Each string and each key of a kept value, at any depth: never stored, never in an event, one line naming
    where it was, never the value."""
    path = tmp_path / "hosts.ini"
    path.write_text(line + "\n")
    result = cli("--db", sqlite_url, "inventory", "import", "-i", path)
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1 and "credential" in result.err
    assert "pw-44" not in result.err
    with sqlite_db.session() as s:
        assert s.scalar(select(func.count(Host.id))) == 0
        assert not any("pw-44" in json.dumps(e.details) for e in s.scalars(select(Event)))


def test_ordinary_ssh_arguments_are_not_taken_for_credentials(tmp_path, cli, sqlite_db, sqlite_url):
    path = tmp_path / "hosts.ini"
    path.write_text(
        "web1 ansible_ssh_common_args='-o PasswordAuthentication=no -o ProxyJump=admin@bastion -o "
        "IdentitiesOnly=yes' klp_patch_params='{\"timeout\": 5}'\n"
    )
    assert cli("--db", sqlite_url, "inventory", "import", "-i", path).code == 0


# ------------------------------------------------------------------ FP1-FP4: stale import skips


def _import(cli, url, source, *args):
    result = cli("--db", url, "inventory", "import", "-i", source, *args, "-o", "json")
    assert result.code == 0, result.err
    return result.json()["data"]


def test_a_symlinked_group_vars_directory_is_read_again(tmp_path, cli, sqlite_db, sqlite_url):
    real = tmp_path / "shared_vars"
    real.mkdir()
    (real / "web.yml").write_text("klp_on_stall: wait\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "hosts.ini").write_text("[web]\nweb1\n")
    (site / "group_vars").symlink_to(real)
    assert _import(cli, sqlite_url, site / "hosts.ini")["added"] == 1
    (real / "web.yml").write_text("klp_on_stall: reverse\n")
    again = _import(cli, sqlite_url, site / "hosts.ini")
    assert not again["skipped"] and again["updated"] == 1


def test_a_directory_source_with_a_symlinked_subdirectory_is_read_again(tmp_path, cli, sqlite_db, sqlite_url):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "more.ini").write_text("[db]\ndb1\n")
    site = tmp_path / "inv"
    site.mkdir()
    (site / "hosts.ini").write_text("[web]\nweb1\n")
    (site / "linked").symlink_to(elsewhere)
    _import(cli, sqlite_url, site)
    (elsewhere / "more.ini").write_text("[db]\ndb1\ndb2\n")
    again = _import(cli, sqlite_url, site)
    assert not again["skipped"] and again["added"] == 1


@pytest.mark.parametrize("spelling", ['"plugin": constructed', "'plugin': constructed", '{"plugin": "constructed"}'])
def test_a_plugin_config_however_spelled_is_never_skipped(tmp_path, spelling):
    """An inventory plugin's config asks a cloud API: the same bytes can mean other hosts, so it is always read."""
    from klpfleet.inventory.fingerprint import fingerprint

    static = tmp_path / "hosts.yml"
    static.write_text("all:\n  hosts:\n    web1:\n")
    assert fingerprint([str(static)], {}) is not None

    config = tmp_path / "inv.constructed.yml"
    config.write_text(spelling + "\n")
    assert fingerprint([str(config)], {}) is None


def test_hosts_the_recorder_discovered_since_an_import_make_it_read_again(tmp_path, cli, sqlite_db, sqlite_url):
    source = tmp_path / "hosts.ini"
    source.write_text("[web]\nweb1\n")
    _import(cli, sqlite_url, source, "--prune")
    Recorder(sqlite_db).record_task_result(None, "handrun1", "klpfleet.livepatch.patch_info", "ok", {})
    again = _import(cli, sqlite_url, source, "--prune")
    assert not again["skipped"] and again["removed"] == 1  # Ansible would not list handrun1: --prune removes it


# ------------------------------------------------------------------ F13b, B1, B2: directories that run as root


def _other_user() -> int:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    return 65534  # nobody


def test_a_remote_dir_another_user_owns_is_refused(tmp_path):
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._artifact import install
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import LivepatchError

    nobody = _other_user()
    owned = tmp_path / "owned"
    owned.mkdir(mode=0o755)
    os.chown(owned, nobody, nobody)
    with pytest.raises(LivepatchError, match="only this user"):
        install(b"\x7fELF", str(owned), "0" * 64)
    parent = tmp_path / "parent"
    parent.mkdir(mode=0o755)
    os.chown(parent, nobody, nobody)  # below a directory another user can rename things in
    with pytest.raises(LivepatchError, match="neither root nor this user"):
        install(b"\x7fELF", str(parent / "patches"), "0" * 64)
    writable = tmp_path / "writable"
    writable.mkdir()
    os.chmod(writable, 0o777)  # without the sticky bit
    with pytest.raises(LivepatchError, match="can be written by other users"):
        install(b"\x7fELF", str(writable / "patches"), "0" * 64)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)  # like /tmp: fine above us
    path, written = install(b"\x7fELF", str(sticky / "patches"), "a" * 64)
    assert written and os.stat(os.path.dirname(path)).st_uid == os.geteuid()


@pytest.mark.parametrize("how", ["owner", "mode", "manifest"])
def test_the_boot_loader_loads_nothing_from_a_directory_others_can_change(tmp_path, capsys, how):
    """After a patch was kept, its boot directory is given away or opened up: the loader refuses it at the next
    boot (it loads as root what the manifest names) and says why; nothing is loaded."""
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost
    from ansible_collections.klpfleet.livepatch.plugins.modules import patch as patch_module
    from klpfleet.sim.fleet import reboot_host

    from .simhelpers import RELEASE, build, sim_host
    from .test_collection_modules import run_module

    nobody = _other_user()
    host = tmp_path / "host"
    sim_host(host)
    ko = build(tmp_path, "lp_kept")
    assert run_module(patch_module, capsys, backend="sim", sim_root=str(host), src=ko)["persisted"]
    release_dir = host / "boot" / RELEASE
    if how == "owner":
        os.chown(release_dir, nobody, nobody)
    elif how == "mode":
        os.chmod(release_dir, 0o777)
    else:
        os.chmod(release_dir / "manifest.json", 0o666)
    status = reboot_host(host)
    assert status["results"] == [] and "error" in status, status
    with SimHost(str(host)) as k:
        assert [p["name"] for p in k.s["patches"]] == []
        assert any("klpfleet-boot: cannot read the manifest" in text for _, _, text in k.s["log"])


# ------------------------------------------------------------------ the low items


@pytest.mark.ansible
def test_a_run_never_sees_the_controllers_database_password(tmp_path, sqlite_url, monkeypatch):
    from klpfleet.controller.playbook import run_playbook
    from klpfleet.inventory.export import fleet_inventory
    from klpfleet.runs.engine import resolve
    from klpfleet.runs.types import RunRequest

    monkeypatch.setenv("PGPASSWORD", "sekrit-5531")
    db = fleet_db(tmp_path, sqlite_url, hosts=1, gather=False)
    run = run_playbook(
        RunRequest(
            db=db,
            playbook=str(ROOT / "tests" / "playbooks" / "echo_env.yml"),
            records=fleet_inventory(db),
            extravars={"probe_out": str(tmp_path / "env")},
            runs_in=tmp_path / "runs",
            ident="env",
            forks=1,
            engine=resolve("ansible"),
        )
    )
    assert run.status == "successful"
    assert (tmp_path / "env-sim-01").read_text() == "[]"


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        ("UPDATE hosts SET vars = '{broken'", ["host", "web1"]),
        ("UPDATE hosts SET last_seen = 'not-a-time'", ["hosts"]),
        ("UPDATE host_patches SET observed_at = '2026-13-45'", ["host", "web1"]),
    ],
)
def test_rows_that_do_not_decode_are_one_line_and_exit_3(tmp_path, sqlite_db, sqlite_url, ko_factory, sql, args):
    from klpfleet.registry.patches import add_patch

    with sqlite_db.session.begin() as s:
        add_patch(s, ko_factory("livepatch_test"))
    Recorder(sqlite_db).record_task_result(
        None, "web1", "klpfleet.livepatch.patch_info", "ok", {"patches": [{"name": "livepatch_test"}]}
    )
    with sqlite_db.engine.begin() as conn:
        conn.execute(text(sql))
    result = run_klpfleet("--db", sqlite_url, *args)
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "cannot read (edited or damaged)" in result.stderr


def test_a_state_klpfleet_never_writes_makes_the_health_unknown(sqlite_db, sqlite_url, ko_factory):
    from klpfleet.registry.patches import add_patch

    with sqlite_db.session.begin() as s:
        add_patch(s, ko_factory("livepatch_test"))
    Recorder(sqlite_db).record_task_result(
        None, "web1", "klpfleet.livepatch.patch_info", "ok", {"patches": [{"name": "livepatch_test"}]}
    )
    with sqlite_db.engine.begin() as conn:
        conn.execute(text("UPDATE host_patches SET state = 'totally_fine'"))
    result = run_klpfleet("--db", sqlite_url, "status", "-o", "json")
    assert result.returncode == 3
    data = json.loads(result.stdout)["data"]
    assert data["health"] == "unknown" and data["unknown_states"] == 1
    table = run_klpfleet("--db", sqlite_url, "status")
    assert table.returncode == 3 and "none klpfleet writes" in table.stdout


def test_a_missing_vault_password_file_is_one_line(tmp_path, cli, sqlite_db, sqlite_url, monkeypatch):
    source = tmp_path / "hosts.ini"
    source.write_text("web1\n")
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(tmp_path / "nowhere"))
    result = cli("--db", sqlite_url, "inventory", "import", "-i", source)
    assert result.code == 2 and result.err.count("\n") == 1 and "vault password file" in result.err


def test_a_damaged_simulated_host_is_one_line(tmp_path):
    from .simhelpers import sim_host

    sim_host(tmp_path / "host")
    (tmp_path / "host" / "kernel.json").write_text("{not json")
    result = run_klpfleet("sim", "host", "log", str(tmp_path / "host"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "damaged" in result.stderr


def test_a_node_cannot_claim_every_cpu_in_the_world():
    from klpfleet.nodes.assign import assign
    from klpfleet.nodes.registry import Node

    def node(name: str, cpus: object) -> Node:
        return Node(name=name, user="u", host="h", capacity={"cpu_count": cpus})

    records = [{"name": f"h{i}", "labels": {}} for i in range(200)]
    shares, _ = assign(records, [node("honest", 4), node("greedy", 1e308), node("nan", float("nan"))])
    assert len(shares.get("honest", [])) > 50  # the liar's claim counts as one CPU, not as all of them


def test_delegating_to_an_address_records_the_host_at_that_address(sqlite_db, ko_factory):
    from klpfleet.registry.patches import add_patch

    with sqlite_db.session.begin() as s:
        add_patch(s, ko_factory("livepatch_test"))
        s.add(Host(name="db1", address="10.9.8.7", vars={}))
    result = {"outcome": "applied", "name": "livepatch_test", "_ansible_delegated_vars": {"ansible_host": "10.9.8.7"}}
    Recorder(sqlite_db).record_task_result(
        None, "web1", "klpfleet.livepatch.patch", "ok", result, delegate_to="10.9.8.7"
    )
    with sqlite_db.session() as s:
        assert set(s.scalars(select(Host.name))) == {"db1"}  # neither a phantom "10.9.8.7" nor web1
        assert s.scalar(select(HostPatch.state)) == "applied"
