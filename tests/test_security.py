"""Security: data from inventories and hosts never becomes code, secrets never leak, a poisoned input never
sticks. Each test here failed on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .ansiblehelpers import ansible_inventory, playbook
from .conftest import run_klpfleet
from .controllerhelpers import fleet_db, register


def payload(marker: Path, n: int) -> str:
    return "{{ lookup('pipe', 'touch " + f"{marker}-{n}') }}}}"


def hostile_inventory(tmp: Path, marker: Path) -> Path:
    """The simulated fleet's inventory with template payloads in every place a value can hide."""
    inventory = yaml.safe_load((tmp / "fleet" / "inventory.yml").read_text())
    first = inventory["all"]["hosts"]["sim-01"]

    def pipe(n: int) -> str:
        return payload(marker, n)

    first["ansible_host"] = pipe(1)
    first["ansible_user"] = pipe(2)
    first["ansible_ssh_private_key_file"] = pipe(3)
    first["klp_patch_params"] = {"nested": [pipe(4)], pipe(5): "as a key"}
    first["rack"] = "{% set x = lookup('pipe', 'touch " + f"{marker}-6') %}}r1"
    first["klp_labels"] = {"team": "{# comment #}" + pipe(7)}
    text = yaml.safe_dump(inventory)
    # The same payload marked !unsafe at the source must stay unsafe all the way.
    text = text.replace("ansible_host: ", "ansible_host: !unsafe ", 1)
    path = tmp / "hostile.yml"
    path.write_text(text)
    return path


@pytest.mark.ansible
def test_inventory_values_never_run_as_templates_in_a_rollout_or_through_the_plugin(tmp_path, sqlite_url):
    marker = tmp_path / "PWNED"
    db = fleet_db(tmp_path, sqlite_url, hosts=3)
    imported = run_klpfleet("--db", sqlite_url, "inventory", "import", "-i", str(hostile_inventory(tmp_path, marker)))
    assert imported.returncode == 0, imported.stderr
    register(db, tmp_path)
    env = {"KLPFLEET_RUN_DIR": str(tmp_path / "runs")}
    created = run_klpfleet("--db", sqlite_url, "rollout", "create", "livepatch_cve_2026_1234", "--waves", "100%")
    assert created.returncode == 0, created.stderr
    started = run_klpfleet("--db", sqlite_url, "rollout", "start", "1", "--wait", env=env, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    assert sorted(p.name for p in tmp_path.glob("PWNED*")) == []

    # The inventory plugin: the values arrive as the literal text, and a playbook using them runs nothing.
    config = tmp_path / "fleet.klpfleet.yml"
    config.write_text(f"plugin: klpfleet.livepatch.fleet\ndb: {sqlite_url}\n")
    listed = ansible_inventory(config, "--host", "sim-01")
    assert listed.returncode == 0, listed.stderr
    hostvars = json.loads(listed.stdout)
    assert hostvars["ansible_user"] == payload(marker, 2)
    assert hostvars["klp_patch_params"]["nested"] == [payload(marker, 4)]
    book = tmp_path / "show.yml"
    book.write_text(
        "- hosts: sim-01\n  gather_facts: false\n  tasks:\n"
        "    - debug: {msg: '{{ ansible_user }} {{ klp_patch_params }} {{ rack }} {{ klp_labels }}'}\n"
        "    - debug: {msg: '{{ ansible_host }} {{ ansible_ssh_private_key_file }}'}\n"
    )
    shown = playbook(config, book, env={"ANSIBLE_CONFIG": str(tmp_path / "none.cfg")})
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "touch" in shown.stdout  # the text itself was printed, not run
    assert sorted(p.name for p in tmp_path.glob("PWNED*")) == []


@pytest.mark.ansible
def test_the_plugin_and_the_controller_build_host_vars_with_one_builder(tmp_path, sqlite_url):
    """The inventory plugin's host vars and the controller's frozen inventory are both exactly host_vars():
    connection columns, stored vars, then labels that do not shadow a var."""
    from sqlalchemy import select

    from klpfleet.db.models import Host, HostLabel
    from klpfleet.inventory.export import TrustedTemplate, fleet_inventory, host_vars
    from klpfleet.runs.folder import frozen_inventory

    db = fleet_db(tmp_path, sqlite_url, hosts=2, gather=False)
    with db.session.begin() as s:
        host = s.scalar(select(Host).where(Host.name == "sim-01"))
        host.vars = {**host.vars, "rack": "from-vars"}
        s.add(HostLabel(host_id=host.id, key="rack", value="from-label"))
    records = fleet_inventory(db)
    expected = {r["name"]: host_vars(r) for r in records}
    assert expected["sim-01"]["rack"] == "from-vars"  # a label never overrides a var
    assert isinstance(expected["sim-01"]["ansible_python_interpreter"], TrustedTemplate)
    assert frozen_inventory(records)["all"]["hosts"] == expected

    def plain(value):
        if isinstance(value, dict) and set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()} if isinstance(value, dict) else value

    config = tmp_path / "fleet.klpfleet.yml"
    config.write_text(f"plugin: klpfleet.livepatch.fleet\ndb: {sqlite_url}\n")
    listed = ansible_inventory(config, "--list")
    assert listed.returncode == 0, listed.stderr
    hostvars = json.loads(listed.stdout)["_meta"]["hostvars"]
    for name, want in expected.items():
        got = {k: plain(v) for k, v in hostvars[name].items() if k in want}
        assert got == {k: str(v) if isinstance(v, TrustedTemplate) else v for k, v in want.items()}, name


@pytest.mark.ansible
@pytest.mark.postgres
def test_database_passwords_never_reach_argv_or_run_folders(tmp_path, pg_url, monkeypatch):
    """The background driver gets the URL by environment; runs get no URL; run folders keep no environment."""
    secret = "s3cret-pw-4711"
    url = pg_url.replace("klpfleet@", f"klpfleet:{secret}@")  # trust auth: the password is carried, not checked
    runs = tmp_path / "runs"
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(runs))
    monkeypatch.setenv("PGPASSWORD", secret)  # a secret in the controller's own environment, too
    db = fleet_db(tmp_path, url, hosts=3)
    register(db, tmp_path)
    assert (
        run_klpfleet("--db", url, "rollout", "create", "livepatch_cve_2026_1234", "--waves", "1,100%").returncode == 0
    )
    started = run_klpfleet("--db", url, "rollout", "start", "1")
    assert started.returncode == 0, started.stderr
    seen_in_argv = []
    status = None
    for _ in range(600):
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if secret.encode() in cmdline.read_bytes():
                    seen_in_argv.append(cmdline.read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
        status = run_klpfleet("--db", url, "rollout", "status", "1", "-o", "json")
        if json.loads(status.stdout)["data"]["status"] not in ("planned", "running"):
            break
    assert json.loads(status.stdout)["data"]["status"] == "completed", status.stdout
    assert seen_in_argv == []
    leaked = [p for p in runs.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
    assert list(runs.rglob("envvars")) == []
    # Each run has a folder of its own, private to the user.
    assert all((p.stat().st_mode & 0o077) == 0 for p in runs.rglob("*") if p.is_dir() and p.name.startswith("r1-"))


@pytest.mark.ansible
def test_two_databases_with_the_same_rollout_id_keep_their_own_results(tmp_path, monkeypatch):
    """Run folders belong to one database and one run: rollout 1 of database B records into B only."""
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    from sqlalchemy import func, select

    from klpfleet.db.models import AnsibleRun, HostPatch

    counts = {}
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        url = f"sqlite:///{home / 'k.db'}"
        db = fleet_db(home, url, hosts=2 if name == "a" else 3)
        register(db, home)
        assert (
            run_klpfleet("--db", url, "rollout", "create", "livepatch_cve_2026_1234", "--waves", "100%").returncode == 0
        )
        done = run_klpfleet("--db", url, "rollout", "start", "1", "--wait", timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        with db.session() as s:
            counts[name] = (
                s.scalar(select(func.count()).select_from(HostPatch).where(HostPatch.state == "applied")),
                sorted(s.scalars(select(AnsibleRun.ident))),
            )
    assert counts["a"][0] == 2 and counts["b"][0] == 3
    assert counts["a"][1] == counts["b"][1] == ["gather", "r1-w1-t1"]
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(folders) == 2  # one per database


def test_patch_add_stores_exactly_the_bytes_it_hashed(tmp_path, sqlite_db, monkeypatch, ko_factory):
    """A file swapped on disk while `patch add` checks it: what is stored is what was hashed."""
    import hashlib

    from klpfleet.registry import modinfo, patches

    genuine = ko_factory("lp_race")
    evil = ko_factory("lp_race", srcversion="EVIL0000000000000000000")
    inspect = modinfo.inspect_module

    def swap_then_inspect(data, label):
        Path(label).write_bytes(evil.read_bytes())  # the attacker wins the race right after the read
        return inspect(data, label)

    monkeypatch.setattr(modinfo, "inspect_module", swap_then_inspect)
    target = tmp_path / "incoming.ko"
    target.write_bytes(genuine.read_bytes())
    with sqlite_db.session.begin() as s:
        patch, created = patches.add_patch(s, target)
    assert created and patch.sha256 == hashlib.sha256(genuine.read_bytes()).hexdigest()
    assert hashlib.sha256(Path(patch.path).read_bytes()).hexdigest() == patch.sha256


def test_a_poisoned_store_entry_is_repaired_by_adding_the_genuine_file(sqlite_db, ko_factory):
    import hashlib

    from klpfleet.registry.patches import add_patch

    genuine = ko_factory("lp_store")
    with sqlite_db.session.begin() as s:
        patch, _ = add_patch(s, genuine)
    stored = Path(patch.path)
    stored.chmod(0o644)
    stored.write_bytes(ko_factory("lp_store", srcversion="EVIL0000000000000000000").read_bytes())
    with sqlite_db.session.begin() as s:
        again, created = add_patch(s, genuine)
    assert not created and again.id == patch.id
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == patch.sha256
    assert (stored.stat().st_mode & 0o222) == 0
