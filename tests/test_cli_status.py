"""The fleet status CLI: health and exit codes, filters, host detail, output formats, bad input."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from sqlalchemy import select

from klpfleet.db.models import Host, HostLabel, Patch
from klpfleet.hoststate.observations import PatchObservation, observe
from klpfleet.registry.patches import add_patch
from klpfleet.states import PatchState

from .conftest import make_ko, run_klpfleet


def seed(db, tmp_path, states: dict[str, PatchState], *, unreachable=(), kernel="6.1.0-56-amd64", clean=None):
    with db.session.begin() as s:
        patch, _ = add_patch(s, make_ko(tmp_path / "lp.ko", "livepatch_cve_2026_1234"), cves=["CVE-2026-1234"])
        for i, (name, state) in enumerate(sorted(states.items())):
            host = Host(name=name, address=f"192.0.2.{i + 1}", kernel_release=kernel, reachable=name not in unreachable)
            host.labels = [HostLabel(key="zone", value="abc"[i % 3])]
            s.add(host)
            s.flush()
            observe(
                s,
                host,
                patch,
                PatchObservation(
                    state=state,
                    enabled=state == PatchState.APPLIED,
                    error_code="refused" if state == PatchState.REFUSED else None,
                    errno=19 if state == PatchState.REFUSED else None,
                    refused_object="vmlinux" if state == PatchState.REFUSED else None,
                    host_clean=clean,
                ),
                observed_by="test",
            )
    return patch


@pytest.mark.parametrize(
    ("states", "unreachable", "health", "code"),
    [
        ({"h1": PatchState.APPLIED, "h2": PatchState.ABSENT}, (), "healthy", 0),
        ({"h1": PatchState.APPLIED, "h2": PatchState.REFUSED}, (), "degraded", 1),
        ({"h1": PatchState.APPLIED, "h2": PatchState.APPLIED}, ("h2",), "degraded", 1),
        ({"h1": PatchState.FORCED, "h2": PatchState.DRIFT}, (), "degraded", 1),
        ({"h1": PatchState.STALLED, "h2": PatchState.REFUSED}, (), "critical", 2),
        ({"h1": PatchState.FAILED}, (), "critical", 2),
        ({"h1": PatchState.STALLED}, (), "degraded", 1),  # seeded host_clean=True: reversed, verified clean
    ],
)
def test_status_health_and_exit_code(cli, sqlite_db, sqlite_url, tmp_path, states, unreachable, health, code):
    seed(sqlite_db, tmp_path, states, unreachable=unreachable, clean=True if health == "degraded" else None)
    result = cli("--db", sqlite_url, "status", "-o", "json")
    assert result.code == code, result.err
    doc = result.json()
    assert doc["schema_version"] == 1
    assert doc["generated_at"].endswith("Z")
    data = doc["data"]
    assert data["health"] == health
    assert data["hosts"]["total"] == len(states)
    assert data["hosts"]["by_kernel_release"] == {"6.1.0-56-amd64": len(states)}
    [patch] = data["patches"]
    expected: dict[str, int] = {}
    for s in states.values():
        expected[s.value] = expected.get(s.value, 0) + 1
    assert patch["states"] == expected
    flagged = {(a["host"], a["state"]) for a in data["attention"]["hosts"]}
    for name, state in states.items():
        if state in (PatchState.REFUSED, PatchState.STALLED, PatchState.FAILED, PatchState.FORCED, PatchState.DRIFT):
            assert (name, state.value) in flagged
    for name in unreachable:
        assert (name, "unreachable") in flagged
    # the table renders and keeps the same exit code
    table = cli("--db", sqlite_url, "status")
    assert table.code == code
    assert health.upper() in table.out


def test_status_unknown_when_database_unreachable(cli, tmp_path):
    result = cli("--db", "postgresql://nobody@127.0.0.1:1/none", "status", "-o", "json")
    assert result.code == 3
    assert result.json()["data"]["health"] == "unknown"
    table = cli("--db", "postgresql://nobody@127.0.0.1:1/none", "status")
    assert table.code == 3
    assert len(table.err.strip().splitlines()) == 1


def test_hosts_filters_and_host_detail(cli, sqlite_db, sqlite_url, tmp_path):
    seed(sqlite_db, tmp_path, {"h1": PatchState.APPLIED, "h2": PatchState.REFUSED, "h3": PatchState.APPLIED})
    refused = cli("--db", sqlite_url, "hosts", "--state", "refused", "-o", "json").json()["data"]
    assert [h["name"] for h in refused] == ["h2"]
    assert refused[0]["patches"] == {"livepatch_cve_2026_1234": "refused"}
    by_patch = cli(
        "--db", sqlite_url, "hosts", "--patch", "livepatch_cve_2026_1234", "--state", "applied", "-o", "json"
    ).json()["data"]
    assert [h["name"] for h in by_patch] == ["h1", "h3"]
    zone_b = cli("--db", sqlite_url, "hosts", "--label", "zone=b", "-o", "yaml")
    assert [h["name"] for h in yaml.safe_load(zone_b.out)["data"]] == ["h2"]
    detail = cli("--db", sqlite_url, "host", "h2", "-o", "json").json()["data"]
    [p] = detail["patches"]
    assert (p["state"], p["error_code"], p["errno"], p["refused_object"]) == ("refused", "refused", 19, "vmlinux")
    assert detail["events"][0]["kind"] == "patch.state"
    assert detail["events"][0]["details"]["to"] == "refused"
    assert detail["events"][0]["at"].endswith("Z")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["host", "nosuchhost"], "no host 'nosuchhost'"),
        (["hosts", "--state", "bogus"], "unknown state 'bogus'"),
        (["hosts", "--patch", "nopatch"], "no patch 'nopatch'"),
        (["hosts", "--group", "nogroup"], "no group 'nogroup'"),
        (["hosts", "--label", "zone"], "KEY=VALUE"),
        (["hosts", "-o", "xml"], "'xml' is not one of"),
        (["nosuchcommand"], "no command 'nosuchcommand'"),
    ],
)
def test_bad_input_is_one_line_non_zero(cli, sqlite_db, sqlite_url, args, message):
    result = cli("--db", sqlite_url, *args)
    assert result.code != 0
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert result.out == ""


@pytest.mark.parametrize("url", ["nosuchdriver://x/y", "postgresql://u@127.0.0.1:1/db", "::not a url::"])
def test_bad_database_urls_as_a_process(tmp_path, url):
    proc = run_klpfleet("--db", url, "hosts", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = run_klpfleet("--debug", "--db", "postgresql://u@127.0.0.1:1/db", "hosts", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from klpfleet.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('sqlalchemy', 'ansible', 'fabric', 'rich', 'alembic', 'elftools') "
        "if m in sys.modules]\nprint(heavy, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr.strip() == "[]"
    assert "inventory" in proc.stdout


def test_piped_table_is_plain_text(sqlite_db, sqlite_url, tmp_path):
    seed(sqlite_db, tmp_path, {"h1": PatchState.APPLIED})
    proc = run_klpfleet("--db", sqlite_url, "hosts")
    assert proc.returncode == 0
    assert "\x1b[" not in proc.stdout
    assert proc.stdout.splitlines()[0].split() == [
        "host",
        "address",
        "kernel",
        "release",
        "reachable",
        "labels",
        "patches",
    ]


def test_json_is_valid_for_every_read_command(cli, sqlite_db, sqlite_url, tmp_path):
    seed(sqlite_db, tmp_path, {"h1": PatchState.APPLIED})
    with sqlite_db.session() as s:
        sha = s.scalar(select(Patch.sha256))
    for args in (
        ["status"],
        ["hosts"],
        ["host", "h1"],
        ["patch", "list"],
        ["patch", "show", sha[:10]],
        ["events"],
        ["db", "current"],
    ):
        result = cli("--db", sqlite_url, *args, "-o", "json")
        assert result.code == 0, (args, result.err)
        assert json.loads(result.out)["schema_version"] == 1


def test_events_follow_prints_each_new_event_as_a_line(sqlite_db, sqlite_url):
    """`events -f` as scripts use it: the recent events, then every new one as it is recorded, filters applied."""
    from klpfleet.db import events as db_events

    with sqlite_db.session.begin() as s:
        db_events.add(s, "test.before", actor="t", n=0)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "klpfleet.cli.main",
            "--db",
            sqlite_url,
            "events",
            "-f",
            "--kind",
            "test.",
            "-o",
            "json",
            "--interval",
            "0.2s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def line():
        import select

        ready, _, _ = select.select([proc.stdout], [], [], 30)  # never hang the suite: fail after 30 s
        assert ready, "events -f printed nothing within 30 s"
        return json.loads(proc.stdout.readline())

    try:
        first = line()
        assert (first["kind"], first["details"]) == ("test.before", {"n": 0})
        with sqlite_db.session.begin() as s:
            db_events.add(s, "other.kind", actor="t")  # filtered out
            db_events.add(s, "test.after", actor="t", n=1)
        second = line()
        assert (second["kind"], second["details"], second["id"] > first["id"]) == ("test.after", {"n": 1}, True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("klpfleet host we", ["web1", "web2"]),
        ("klpfleet rollout create livepatch_t", ["livepatch_test"]),
        ("klpfleet cve CVE-2026-9", ["CVE-2026-9999"]),
        ("klpfleet cv", ["cve", "cves"]),
        ("klpfleet node remove e", ["eu1"]),
        ("klpfleet hosts --group we", ["webservers"]),
        ("klpfleet hosts --label zo", ["zone=eu-1"]),
        ("klpfleet hosts --state app", ["applied"]),
        ("klpfleet rollout create livepatch_test --by zo", ["zone"]),
        ("klpfleet rollout create livepatch_test --hosts web", ["web1", "web2"]),
    ],
)
def test_shell_completion_offers_names_from_the_database(sqlite_db, sqlite_url, ko_factory, words, expected):
    from klpfleet.db.models import ExecutionNode, Group, Host, HostLabel
    from klpfleet.registry.patches import add_patch

    with sqlite_db.session.begin() as s:
        s.add(
            ExecutionNode(
                name="eu1", ssh_user="r", ssh_host="10.0.1.5", serves_label="zone", serves_value="eu-1", added_by="t"
            )
        )
        web1 = Host(name="web1", vars={}, groups=[Group(name="webservers")])
        s.add_all([web1, Host(name="web2", vars={}), Host(name="db1", vars={})])
        s.flush()
        s.add(HostLabel(host_id=web1.id, key="zone", value="eu-1"))
        add_patch(s, ko_factory("livepatch_test"), cves=["CVE-2026-9999"])
    env = {
        **os.environ,
        "_KLPFLEET_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    env["KLPFLEET_DB"] = sqlite_url
    proc = subprocess.run(
        [sys.executable, "-m", "klpfleet.cli.main"], env=env, capture_output=True, text=True, check=False
    )
    assert [line.split(",", 1)[1] for line in proc.stdout.splitlines()] == expected, proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("rollout", "create"),
        ("rollout", "start"),
        ("rollback",),
        ("status",),
        ("probe",),
        ("reconcile",),
        ("cves",),
        ("events",),
    ],
)
def test_main_commands_show_examples_in_their_help(cli, command):
    result = cli(*command, "--help")
    assert result.code == 0 and "Examples:" in result.out
    examples = result.out.split("Examples:", 1)[1]
    assert f"klpfleet {' '.join(command)}" in examples.replace("klpfleet cve ", "klpfleet cves ")
