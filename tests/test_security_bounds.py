"""Security at the edges an operator meets: damaged, newer or shared databases, credentials and vault values in
inventories, terminal escapes from hosts, outputs and directories bounded, concurrent imports and adds. Each test
here failed on the code before its fix."""

from __future__ import annotations

import subprocess

import pytest

from .ansiblehelpers import BIN, apply_ko
from .controllerhelpers import fleet_db, gather_fleet


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

    db = fleet_db(tmp_path, sqlite_url, hosts=2)
    hostile = "6.1.0-56-amd64\x1b]0;owned\x07\x1b[2J"
    with SimHost(str(tmp_path / "fleet" / "hosts" / "sim-01")) as kernel:
        kernel.s["kernel_release"] = hostile
    gather_fleet(db, tmp_path, "gather-hostile")
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
        return apply_ko(
            inventory,
            ko,
            sha,
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
