"""What an operator reads and types: messages written for people (plurals, no Python reprs, accurate reasons),
patch metadata that can change (`patch cve add|remove`, a CVE named again with the same file), a planned rollout
that can be aborted or deleted at once (its hosts freed), `rollout list` that does not show a wave that never ran,
and "did you mean" for a mistyped command."""

import json

import pytest
from sqlalchemy import select, update

from klpfleet.db.models import Event, Host, Patch

from .controllerhelpers import fleet_db, register

pytestmark = pytest.mark.ansible
PATCH = "livepatch_cve_2026_1234"


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=2)
    register(db, tmp_path)
    return tmp_path, url, db


def test_one_host_in_one_wave_is_said_so(cli, fleet):
    _tmp, url, _db = fleet
    planned = cli("--db", url, "rollout", "create", PATCH, "--hosts", "sim-01", "--waves", "1")
    assert planned.code == 0 and "1 host in 1 wave;" in planned.err, planned.err
    both = cli("--db", url, "rollout", "create", PATCH, "--hosts", "sim-02", "--waves", "1")
    assert "1 host in 1 wave;" in both.err
    listed = cli("--db", url, "rollout", "list")
    assert " -/1 " in listed.out and " 1/1 " not in listed.out  # no wave ran yet: none is shown as current


def test_a_cve_named_again_with_the_same_file_is_recorded_and_cves_can_change(cli, fleet, tmp_path):
    _tmp, url, db = fleet
    ko = tmp_path / f"{PATCH}.ko"
    again = cli("--db", url, "patch", "add", str(ko), "--cve", "CVE-2026-7777")
    assert again.code == 0 and "already registered" in again.err and "now also fixes CVE-2026-7777" in again.err
    assert cli("--db", url, "patch", "cve", "add", PATCH, "CVE-2026-8888", "cve-2026-9999").code == 0
    removed = cli("--db", url, "patch", "cve", "remove", PATCH, "CVE-2026-7777")
    assert removed.code == 0 and "removed CVE-2026-7777" in removed.err
    with db.session() as s:
        assert s.scalar(select(Patch.cves).where(Patch.name == PATCH)) == ["CVE-2026-8888", "CVE-2026-9999"]
        kinds = [k for (k,) in s.execute(select(Event.kind).where(Event.kind.like("patch.cve_%")))]
    assert kinds == ["patch.cve_added", "patch.cve_added", "patch.cve_added", "patch.cve_removed"]
    cves = cli("--db", url, "cves", "-o", "json")
    assert {c["cve"] for c in cves.json()["data"]} >= {"CVE-2026-8888", "CVE-2026-9999"}
    bad = cli("--db", url, "patch", "cve", "add", PATCH, "not-a-cve")
    assert bad.code == 2 and "not a CVE id" in bad.err


def test_a_planned_rollout_aborts_at_once_or_is_deleted_and_frees_its_hosts(cli, fleet):
    _tmp, url, db = fleet
    first = cli("--db", url, "rollout", "create", PATCH, "--waves", "100%", "-o", "json").json()["data"]["id"]
    held = cli("--db", url, "rollout", "create", PATCH, "--waves", "100%")
    assert held.code == 2 and "2 hosts held by another active rollout" in held.err
    aborted = cli("--db", url, "rollout", "abort", str(first))
    assert aborted.code == 0 and "aborted before it started: no host was touched" in aborted.err
    assert "background" not in aborted.err
    assert cli("--db", url, "rollout", "status", str(first), "-o", "json").json()["data"]["status"] == "aborted"

    second = cli("--db", url, "rollout", "create", PATCH, "--waves", "100%", "-o", "json").json()["data"]["id"]
    deleted = cli("--db", url, "rollout", "delete", str(second))
    assert deleted.code == 0 and "2 hosts free for another rollout" in deleted.err
    assert cli("--db", url, "rollout", "status", str(second)).code == 2  # gone
    assert cli("--db", url, "rollout", "create", PATCH, "--waves", "100%").code == 0  # the hosts are free
    with db.session() as s:
        event = s.scalar(select(Event).where(Event.kind == "rollout.deleted"))
    assert event.details == {"deleted_rollout": second, "hosts": 2}
    refused = cli("--db", url, "rollout", "delete", str(first))
    assert refused.code == 2 and "only a planned rollout is deleted" in refused.err


def test_an_unreachable_host_is_excluded_as_unreachable(cli, fleet):
    _tmp, url, db = fleet
    with db.session.begin() as s:
        s.execute(update(Host).where(Host.name == "sim-02").values(kernel_release=None, reachable=False))
    plan = cli("--db", url, "rollout", "create", PATCH, "--waves", "100%", "-o", "json")
    excluded = {e["host"]: e["reason"] for e in plan.json()["data"]["excluded"]}
    assert excluded == {"sim-02": "unreachable, its kernel never read: reach it, then gather (or klpfleet probe)"}


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["rolout", "list"], "no command 'rolout'; did you mean 'rollout'?"),
        (["cvs"], "did you mean 'cves' or 'cve'?"),
        (["frobnicate"], "no command 'frobnicate' (see `klpfleet --help`)"),
    ],
)
def test_a_mistyped_command_says_what_was_meant(cli, args, said):
    result = cli(*args)
    assert result.code == 2 and said in result.err and "Traceback" not in result.err


def test_no_message_carries_a_python_dict(cli, fleet):
    _tmp, url, _db = fleet
    probed = cli("--db", url, "probe")
    assert "{" not in probed.err and "probed 2 hosts" in probed.err, probed.err
    assert json.loads(cli("--db", url, "status", "-o", "json").out)["data"]["hosts"]["total"] == 2
