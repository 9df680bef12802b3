"""Security: data from inventories and hosts never becomes code, secrets never leak, a poisoned input never
sticks. Each test here failed on the code before its fix."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from .ansiblehelpers import BIN, ansible_inventory, playbook
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


def test_a_damaged_database_is_unknown_not_a_health_verdict(tmp_path, cli):
    from sqlalchemy import text

    from klpfleet.db.engine import open_database
    from klpfleet.db.models import Host

    url = str(tmp_path / "k.db")
    assert cli("--db", url, "db", "upgrade").code == 0
    db = open_database(url)
    with db.session.begin() as s:
        s.add_all(Host(name=f"h{n}", vars={"klp_note": "x" * 200}) for n in range(400))
    with db.engine.begin() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    db.engine.dispose()
    raw = bytearray((tmp_path / "k.db").read_bytes())
    page = 4096
    raw[page * 2 :] = b"\xa5" * (len(raw) - page * 2)  # every page past the schema's is garbage
    (tmp_path / "k.db").write_bytes(bytes(raw))
    result = cli("--db", url, "status", "-o", "json")
    assert result.code == 3, result.err
    assert result.json()["data"]["health"] == "unknown"
    table = cli("--db", url, "status")
    assert table.code == 3 and len(table.err.strip().splitlines()) == 1 and "Traceback" not in table.err
    hosts = cli("--db", url, "hosts")
    assert hosts.code == 3 and len(hosts.err.strip().splitlines()) == 1


def test_a_database_newer_than_this_klpfleet_says_so(tmp_path, cli):
    from sqlalchemy import text

    from klpfleet.db.engine import open_database

    url = str(tmp_path / "k.db")
    assert cli("--db", url, "db", "upgrade").code == 0
    db = open_database(url)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042'"))
    db.engine.dispose()
    for args in (("status",), ("db", "upgrade")):
        result = cli("--db", url, *args)
        assert result.code == 3, result.err
        assert "newer than this klpfleet" in result.err and "upgrade klpfleet" in result.err
        assert len(result.err.strip().splitlines()) == 1


def test_a_new_sqlite_database_is_private_to_its_user(tmp_path, cli):
    url = str(tmp_path / "private" / "k.db")
    assert cli("--db", url, "db", "upgrade").code == 0
    assert (tmp_path / "private").stat().st_mode & 0o077 == 0
    for f in (tmp_path / "private").iterdir():
        assert f.stat().st_mode & 0o077 == 0, f


def test_only_allow_listed_vars_are_stored_and_credentials_are_refused(tmp_path, cli, sqlite_db, sqlite_url):
    from sqlalchemy import select

    from klpfleet.db.models import Host

    ok = tmp_path / "ok.ini"
    ok.write_text(
        "web1 ansible_host=10.0.0.1 klp_api_key=k-7781 klp_db_credentials=c-7782 klp_backend=sim "
        "ansible_ssh_common_args='-o PasswordAuthentication=no'\n"
    )
    result = cli("--db", sqlite_url, "inventory", "import", "-i", ok)
    assert result.code == 0, result.err
    with sqlite_db.session() as s:
        web1 = s.scalar(select(Host).where(Host.name == "web1"))
        assert web1.vars == {"ansible_ssh_common_args": "-o PasswordAuthentication=no", "klp_backend": "sim"}
    hostile = {
        "sshpass": "web2 ansible_ssh_common_args='-o ProxyCommand=\"sshpass -p hunter2 ssh -W %h:%p jump\"'\n",
        "label-token": 'web2 klp_labels=\'{"api_token": "t-7783"}\'\n',
        "label-value": 'web2 klp_labels=\'{"team": "token=t-7784"}\'\n',
    }
    for case, line in hostile.items():
        path = tmp_path / f"{case}.ini"
        path.write_text(line)
        before = cli("--db", sqlite_url, "hosts", "-o", "json").out
        result = cli("--db", sqlite_url, "inventory", "import", "-i", path)
        assert result.code == 2, (case, result.err)
        assert len(result.err.strip().splitlines()) == 1, result.err
        assert "hunter2" not in result.err and "t-778" not in result.err
        assert cli("--db", sqlite_url, "hosts", "-o", "json").out.split('"data"')[1] == before.split('"data"')[1]


def test_vault_values_are_decrypted_with_a_password_or_refused_in_one_line(tmp_path, cli, sqlite_db, sqlite_url):
    import subprocess

    from sqlalchemy import select

    from klpfleet.db.models import Host

    password = tmp_path / "vault-pass"
    password.write_text("correct horse\n")
    encrypted = subprocess.run(
        [
            str(BIN / "ansible-vault"),
            "encrypt_string",
            "--vault-password-file",
            str(password),
            "10.9.8.7",
            "--name",
            "ansible_host",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    inventory = tmp_path / "vaulted.yml"
    inventory.write_text("all:\n  hosts:\n    web1:\n" + "".join(f"      {line}\n" for line in encrypted.splitlines()))
    refused = cli("--db", sqlite_url, "inventory", "import", "-i", inventory)
    assert refused.code == 2 and "vault-encrypted" in refused.err, refused.err
    assert len(refused.err.strip().splitlines()) == 1
    from .conftest import run_klpfleet as run

    done = run(
        "--db",
        sqlite_url,
        "inventory",
        "import",
        "-i",
        str(inventory),
        env={"ANSIBLE_VAULT_PASSWORD_FILE": str(password)},
    )
    assert done.returncode == 0, done.stderr
    with sqlite_db.session() as s:
        assert s.scalar(select(Host.address).where(Host.name == "web1")) == "10.9.8.7"


@pytest.mark.ansible
def test_terminal_escapes_from_a_host_never_reach_the_terminal_or_the_database(tmp_path, sqlite_url, cli):
    """A host whose kernel reports a release with an ESC sequence: not stored, an event says what arrived,
    and no table or line printed carries a control character."""
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost
    from klpfleet.controller.playbook import run_playbook
    from klpfleet.inventory.export import fleet_inventory
    from klpfleet.runs.types import RunRequest

    db = fleet_db(tmp_path, sqlite_url, hosts=2)
    hostile = "6.1.0-56-amd64\x1b]0;owned\x07\x1b[2J"
    with SimHost(str(tmp_path / "fleet" / "hosts" / "sim-01")) as kernel:
        kernel.s["kernel_release"] = hostile
    run_playbook(
        RunRequest(
            db=db,
            playbook="gather.yml",
            records=fleet_inventory(db),
            extravars={},
            runs_in=tmp_path / "runs",
            ident="gather-hostile",
            forks=2,
        )
    )
    probed = cli("--db", sqlite_url, "probe")
    for args in (("hosts",), ("host", "sim-01"), ("events", "--host", "sim-01"), ("status",)):
        shown = cli("--db", sqlite_url, *args)
        assert "\x1b" not in shown.out + shown.err and "\x07" not in shown.out + shown.err, args
    assert "\x1b" not in probed.out + probed.err
    detail = cli("--db", sqlite_url, "host", "sim-01", "-o", "json").json()["data"]
    assert detail["kernel_release"] == "6.1.0-56-amd64"  # what it said before, not the hostile text
    kinds = [e["kind"] for e in cli("--db", sqlite_url, "events", "--host", "sim-01", "-o", "json").json()["data"]]
    assert "host.bad_report" in kinds


def test_printable_escapes_every_control_character():
    from klpfleet.cli.output import cell, printable

    assert printable("web-17") == "web-17"
    assert printable("a\x1b[31mb\x07\u202e") == "a\\x1b[31mb\\x07\\u202e"
    assert "\x1b" not in cell({"k": "\x1b[2J"}) and "\x1b" not in cell(["\x1b"])
    assert printable("two\nlines\x1b", keep_newlines=True) == "two\nlines\\x1b"


@pytest.mark.parametrize("where", ["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def test_a_health_check_that_prints_150_mb_keeps_a_bounded_tail(where, request, tmp_path):
    import sys
    import tracemalloc

    from klpfleet.controller.health import HEALTH_OUTPUT_KEPT
    from klpfleet.probe.ssh import OK, KnownHosts, Target, run_remote

    if where == "local":
        target = Target(name="h", address="h", local=True)
        known = KnownHosts(tmp_path / "known_hosts", accept_new=False)
    else:
        from .sshhelpers import ssh_user

        sshd, key = request.getfixturevalue("sshd"), request.getfixturevalue("ssh_client_key")
        (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
        target = Target(name="h", address="127.0.0.1", port=sshd.port, user=ssh_user(), key_file=str(key))
        known = KnownHosts(tmp_path / "known_hosts", accept_new=False)
    loud = [sys.executable, "-c", "import os\nfor _ in range(150): os.write(1, b'x' * 1048575 + b'\\n')\nprint('END')"]
    tracemalloc.start()
    try:
        result = run_remote(target, loud, "", known, 10.0, 120.0, max_output=HEALTH_OUTPUT_KEPT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.status == OK and result.exit_code == 0, result.error
    assert result.truncated and result.stdout.endswith("END\n") and len(result.stdout) <= HEALTH_OUTPUT_KEPT
    assert peak < 16 * 1024 * 1024, peak


@pytest.mark.ansible
def test_klp_remote_dir_is_absolute_and_an_existing_directory_keeps_its_mode(tmp_path, sqlite_url):
    import hashlib

    from .ansiblehelpers import ROOT

    fleet_db(tmp_path, sqlite_url, hosts=1, gather=False)
    ko = tmp_path / "lp.ko"
    from klpfleet.sim.spec import normalize, write_ko

    write_ko(normalize({"name": "lp_dir", "objects": [{"name": "vmlinux", "funcs": ["f"]}]}), ko)
    sha = hashlib.sha256(ko.read_bytes()).hexdigest()
    inventory = tmp_path / "fleet" / "inventory.yml"

    def apply(remote_dir: str):
        return playbook(
            inventory,
            ROOT / "playbooks" / "apply.yml",
            "-e",
            f"klp_patch_src={ko}",
            "-e",
            f"klp_patch_sha256={sha}",
            "-e",
            f"klp_remote_dir={remote_dir}",
            db_url=sqlite_url,
        )

    before = sorted(p.name for p in (ROOT / "playbooks").iterdir())
    relative = apply("patches-here")
    assert relative.returncode != 0 and "must be an absolute path" in relative.stdout
    assert sorted(p.name for p in (ROOT / "playbooks").iterdir()) == before
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    refused = apply(str(shared))
    assert refused.returncode != 0 and "never changes the mode" in refused.stdout
    assert (shared.stat().st_mode & 0o7777) == 0o1777 and list(shared.iterdir()) == []
    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    own.chmod(0o755)
    ok = apply(str(own))
    assert ok.returncode == 0, ok.stdout[-2000:]
    assert (own.stat().st_mode & 0o7777) == 0o755 and (own / f"{sha}.ko").exists()
    fresh = tmp_path / "fresh" / "patches"
    assert apply(str(fresh)).returncode == 0
    assert (fresh.stat().st_mode & 0o777) == 0o700


def test_spec_log_lines_are_filled_not_formatted(tmp_path):
    """A spec's log line is text with {mod}/{obj}/{cb} placeholders; nothing else in it is interpreted."""
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._operations import apply_patch
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import primitives_for
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost, fill
    from klpfleet.sim.fleet import create_host
    from klpfleet.sim.spec import normalize, write_ko

    assert fill("{mod}: {obj} {cb} {mod.__class__} {0} {{x}}", mod="lp", obj="vmlinux", cb="pre_patch") == (
        "lp: vmlinux pre_patch {mod.__class__} {0} {{x}}"
    )
    hostile = "{mod.__class__.__init__.__globals__}"
    spec = {
        "name": "lp_fmt",
        "objects": [{"name": "vmlinux", "funcs": ["f"], "callbacks": {"pre_patch": {"log": hostile}}}],
    }
    ko = write_ko(normalize(spec), tmp_path / "lp_fmt.ko")
    root = tmp_path / "host"
    create_host(root, speed=0.0)
    result = apply_patch(primitives_for("sim", str(root)), str(ko), transition_timeout=5)
    assert result["outcome"] == "applied"
    with SimHost(str(root)) as k:
        assert hostile in [text for _, _, text in k.s["log"]]


def _at_once(commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    import sys

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "klpfleet.cli.main", *c], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c in commands
    ]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs]


def test_concurrent_imports_of_one_inventory_are_one_import(tmp_path, cli):
    from sqlalchemy import func, select

    from klpfleet.db.engine import open_database
    from klpfleet.db.models import Event, Host

    url = str(tmp_path / "k.db")
    assert cli("--db", url, "db", "upgrade").code == 0
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("".join(f"web{n} ansible_host=10.0.{n // 250}.{n % 250} zone=z{n % 3}\n" for n in range(300)))
    results = _at_once([["--db", url, "inventory", "import", "-i", str(inventory)] for _ in range(4)])
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    db = open_database(url)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Host)) == 300
        assert s.scalar(select(func.count()).select_from(Event).where(Event.kind == "host.added")) == 300


@pytest.mark.postgres
def test_concurrent_patch_adds_of_one_file_are_one_patch(tmp_path, pg_url, ko_factory, cli):
    from sqlalchemy import func, select

    from klpfleet.db.engine import open_database
    from klpfleet.db.models import Patch

    assert cli("--db", pg_url, "db", "upgrade").code == 0
    ko = ko_factory("lp_concurrent")
    results = _at_once([["--db", pg_url, "patch", "add", str(ko)] for _ in range(4)])
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    db = open_database(pg_url)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Patch)) == 1
