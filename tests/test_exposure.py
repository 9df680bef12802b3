"""Exposure per CVE: the rules on a hand-made fleet, and the database's counting (status, `cves`) agreeing with the
host-by-host reading (`cve CVE-ID`) on random fleets, on SQLite and PostgreSQL."""

import random

import pytest

from klpfleet.db.engine import open_database
from klpfleet.db.migrate import upgrade
from klpfleet.db.models import CveFix, Host, HostPatch, Patch
from klpfleet.reads.exposure import exposure, exposure_counts
from klpfleet.states import PatchState

OLD, NEW, OTHER = "6.1.0-56-amd64", "6.1.0-57-amd64", "6.12.1-amd64"


def fleet(url, hosts, patches, rows, fixes=()):
    db = open_database(url, create=True)
    upgrade(db)
    with db.session.begin() as s:
        ids = {}
        for name, release, cves in patches:
            p = Patch(
                name=name, sha256=f"{len(ids):064x}", vermagic="v", kernel_release=release, size=1, cves=cves, path="/x"
            )
            s.add(p)
            s.flush()
            ids[name] = p
        host_rows = {}
        for name, release, reachable in hosts:
            h = Host(name=name, kernel_release=release, reachable=reachable, vars={})
            s.add(h)
            s.flush()
            host_rows[name] = h
        for host, patch, state in rows:
            s.add(HostPatch(host_id=host_rows[host].id, patch_id=ids[patch].id, state=state, observed_by="test"))
        for cve, release in fixes:
            s.add(CveFix(cve=cve, kernel_release=release, marked_by="test"))
    return db


def test_covered_exposed_unknown_by_the_rules(any_db_url):
    db = fleet(
        any_db_url,
        hosts=[
            ("applied", OLD, True),
            ("forced", OLD, True),
            ("refused", OLD, True),
            ("never", OLD, True),
            ("down", OLD, False),
            ("lost", OLD, True),
            ("fixed-kernel", NEW, True),
            ("other", OTHER, True),
            ("unknown-release", None, None),
        ],
        patches=[("fix_old", OLD, ["CVE-2026-1234"]), ("unrelated", OLD, [])],
        rows=[
            ("applied", "fix_old", "applied"),
            ("forced", "fix_old", "forced"),
            ("refused", "fix_old", "refused"),
            ("down", "fix_old", "unreachable"),
            ("lost", "fix_old", "lost_at_reboot"),
            ("never", "unrelated", "applied"),
        ],
        fixes=[("CVE-2026-1234", NEW)],
    )
    with db.engine.connect() as conn:
        (detail,) = exposure(conn)
        (counted,) = exposure_counts(conn)
    hosts = {kind: {h["host"]: h["reason"] for h in rows} for kind, rows in detail.hosts.items()}
    assert hosts == {
        "covered": {"applied": "applied", "forced": "applied", "fixed-kernel": "kernel release fixes it"},
        "exposed": {"refused": "refused", "never": "pending", "down": "unreachable", "lost": "lost_at_reboot"},
        "unknown": {"other": f"no patch for {OTHER}", "unknown-release": "kernel release not known yet"},
    }
    assert counted.counts() == detail.counts() == {"covered": 3, "exposed": 4, "unknown": 2}
    assert counted.exposed_by_reason() == detail.exposed_by_reason()
    assert detail.verdict() == counted.verdict() == "exposed"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_database_counts_what_the_host_by_host_reading_finds(any_db_url, seed):
    rnd = random.Random(seed)
    releases = [OLD, NEW, OTHER, None]
    states = [s.value for s in PatchState]
    patches = [
        ("a_old", OLD, ["CVE-2026-0001"]),
        ("a_new", NEW, ["CVE-2026-0001", "CVE-2026-0002"]),
        ("b_old", OLD, ["CVE-2026-0002"]),
        ("b_old_rebuilt", OLD, ["CVE-2026-0002"]),
    ]
    hosts = [(f"h{i:03d}", rnd.choice(releases), rnd.choice([True, False, None])) for i in range(120)]
    rows = [(h, p[0], rnd.choice(states)) for h, _, _ in hosts for p in patches if rnd.random() < 0.5]
    fixes = [("CVE-2026-0001", OTHER)] if seed != 2 else [("CVE-2026-0003", NEW)]
    db = fleet(any_db_url, hosts, patches, rows, fixes)
    with db.engine.connect() as conn:
        detail, counted = exposure(conn), exposure_counts(conn)
    assert [e.cve for e in detail] == [e.cve for e in counted]
    for d, c in zip(detail, counted, strict=True):
        assert (d.cve, d.counts(), d.exposed_by_reason()) == (c.cve, c.counts(), c.exposed_by_reason())
        assert sum(d.counts().values()) == len(hosts)


def test_exposure_over_time_replays_the_audit_trail(sqlite_url):
    """Two hosts exposed, then one patched, then the other, then the first lost at a reboot: the history says
    so at each moment (in scope: the hosts in scope now)."""
    from datetime import UTC, datetime, timedelta

    from klpfleet.db.models import Event
    from klpfleet.reads.exposure_history import exposure_history

    db = fleet(
        sqlite_url,
        hosts=[("a", OLD, True), ("b", OLD, True)],
        patches=[("fix_old", OLD, ["CVE-2026-1234"])],
        rows=[("a", "fix_old", "lost_at_reboot"), ("b", "fix_old", "applied")],
    )
    start = datetime.now(UTC) - timedelta(hours=4)
    with db.session.begin() as s:
        hosts = {h.name: h for h in s.query(Host)}
        patch = s.query(Patch).one()
        for hours, host, frm, to in [(0, "a", None, "absent"), (1, "a", "absent", "applied"),
                                     (2, "b", None, "applied"), (3, "a", "applied", "lost_at_reboot")]:  # fmt: skip
            s.add(
                Event(
                    at=start + timedelta(hours=hours),
                    actor="t",
                    kind="patch.state",
                    host_id=hosts[host].id,
                    host_name=host,
                    patch_id=patch.id,
                    details={"from": frm, "to": to},
                )
            )
    with db.engine.connect() as conn:
        history = exposure_history(conn, points=5)  # at 0, 1, 2, 3 and 4 hours
    assert [(p["covered"], p["exposed"]) for p in history["CVE-2026-1234"]] == [(0, 2), (1, 1), (2, 0), (1, 1), (1, 1)]


def test_exposure_over_time_ignores_event_rows_that_do_not_decode(sqlite_url):
    """A hand-edited or damaged `details` (not JSON, a list, a number for `to`) says nothing; the replay goes on."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import text

    from klpfleet.reads.exposure_history import exposure_history

    db = fleet(sqlite_url, hosts=[("a", OLD, True)], patches=[("fix_old", OLD, ["CVE-2026-1234"])], rows=[])
    at = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat(sep=" ")
    with db.engine.begin() as conn:
        for details in ("not json", "[1, 2]", '{"to": 7}'):
            conn.execute(
                text(
                    "INSERT INTO events (at, actor, kind, host_id, patch_id, details) "
                    "VALUES (:at, 't', 'patch.state', 1, 1, :details)"
                ),
                {"at": at, "details": details},
            )
    with db.engine.connect() as conn:
        history = exposure_history(conn, points=3)
    assert [(p["covered"], p["exposed"]) for p in history["CVE-2026-1234"]] == [(0, 1)] * 3
