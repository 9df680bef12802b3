"""Benchmark: the read paths at fleet scale, as whole processes.

Seeds 100,000 hosts x 10 patches (1,000,000 host patch states) and 50 events per host (5,000,000
events), plus a finished rollout of 10,000 hosts, then times `klpfleet status -o json`,
`klpfleet hosts --state refused -o json`, `klpfleet host NAME -o json`, `klpfleet rollout status ID -o json`
and `ansible-inventory --list` through the klpfleet.livepatch.fleet inventory plugin.

    python benchmarks/db_scale_bench.py [--hosts 100000] [--patches 10] [--events 50] [--db URL]

Without --db it uses a fresh SQLite file; give a PostgreSQL URL to measure the scale-out path (the
database is seeded with COPY).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from klpfleet.db.engine import open_database
from klpfleet.db.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STATES = ["applied"] * 90 + ["absent"] * 5 + ["refused"] * 3 + ["stalled", "failed"]


def rows(hosts: int, patches: int, events: int, rollout_hosts: int) -> dict[str, list[tuple]]:  # type: ignore[type-arg]
    rnd = random.Random(1)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")  # UTC; the format SQLite columns store
    out: dict[str, list[tuple]] = {}  # type: ignore[type-arg]
    out["patches"] = [
        (p, f"livepatch_{p}", f"{p:064x}", "v", "6.1.0-56-amd64", "[]", 1000, "[]", "/x", now)
        for p in range(1, patches + 1)
    ]
    out["hosts"] = [
        (h, f"host-{h:06d}", f"10.{h >> 16}.{(h >> 8) & 255}.{h & 255}", "{}", "6.1.0-56-amd64", True, now, now)
        for h in range(1, hosts + 1)
    ]
    out["host_labels"] = [(h, "zone", "abc"[h % 3]) for h in range(1, hosts + 1)]
    out["host_patches"] = [
        (h * patches + p, h, p, rnd.choice(STATES), "{}", "[]", 1, now, "bench")
        for h in range(1, hosts + 1)
        for p in range(1, patches + 1)
    ]
    out["rollouts"] = [(1, 1, "completed", "all", "{}", 2, "bench", now, 0)]
    out["waves"] = [(w + 1, 1, w, "completed") for w in range(3)]
    out["wave_hosts"] = [
        (h, 1 + min(2, h * 3 // (rollout_hosts + 1)), 1, h, "done", "applied", 1) for h in range(1, rollout_hosts + 1)
    ]
    details = json.dumps({"from": "pending", "to": "applied", "observed_by": "bench", "outcome": "applied"})
    out["events"] = [
        (
            h * events + e,
            now,
            "bench",
            "patch.state",
            h,
            f"host-{h:06d}",
            (e % patches) + 1,
            f"livepatch_{(e % patches) + 1}",
            1 if h <= rollout_hosts and e == 0 else None,
            details,
        )
        for h in range(1, hosts + 1)
        for e in range(events)
    ]
    return out


COLUMNS = {
    "patches": "id, name, sha256, vermagic, kernel_release, depends, size, cves, path, added_at",
    "hosts": "id, name, address, vars, kernel_release, reachable, created_at, updated_at",
    "host_labels": "host_id, key, value",
    "host_patches": "id, host_id, patch_id, state, objects, stalled_tasks, attempts, observed_at, observed_by",
    "rollouts": "id, patch_id, status, selector, policy, current_wave, created_by, created_at, lease_token",
    "waves": "id, rollout_id, index, status",
    "wave_hosts": "id, wave_id, rollout_id, host_id, status, outcome, attempts",
    "events": "id, at, actor, kind, host_id, host_name, patch_id, patch_name, rollout_id, details",
}


def seed(url: str, data: dict[str, list[tuple]]) -> None:  # type: ignore[type-arg]
    db = open_database(url, create=True)
    upgrade(db)
    if db.engine.dialect.name == "sqlite":
        import sqlite3

        con = sqlite3.connect(db.engine.url.database)
        with con:
            for table, cols in COLUMNS.items():
                marks = ", ".join("?" for _ in cols.split(","))
                con.executemany(
                    f"INSERT INTO {table} ({cols.replace('index', chr(34) + 'index' + chr(34))}) VALUES ({marks})",
                    data[table],
                )
        con.execute("ANALYZE")
        con.close()
    else:
        raw = db.engine.raw_connection()
        cur = raw.cursor()
        for table, cols in COLUMNS.items():
            quoted = cols.replace("index", '"index"')
            with cur.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                for row in data[table]:
                    copy.write_row(row)
        raw.commit()
        for table in COLUMNS:
            if table not in ("host_labels",):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        cur.execute("ANALYZE")
        raw.commit()
        raw.close()
    with db.engine.connect() as conn:
        print("seeded:", {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in COLUMNS}, flush=True)


def timed(argv: list[str], env: dict[str, str], runs: int = 3) -> tuple[float, int]:
    best = float("inf")
    size = 0
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, check=False, cwd=ROOT)
        best = min(best, time.perf_counter() - start)
        size = len(proc.stdout)
        if proc.returncode not in (0, 1, 2):
            raise SystemExit(f"{argv}: rc {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return best, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--patches", type=int, default=10)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--rollout-hosts", type=int, default=10_000)
    parser.add_argument("--db", help="a database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klpfleet-scale-") as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'scale.db'}"
        start = time.perf_counter()
        seed(url, rows(args.hosts, args.patches, args.events, args.rollout_hosts))
        print(f"seeding took {time.perf_counter() - start:.0f} s", flush=True)
        env = {
            **os.environ,
            "KLPFLEET_DB": url,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        }
        config = Path(tmp) / "fleet.klpfleet.yml"
        config.write_text(f"plugin: klpfleet.livepatch.fleet\ndb: {url}\n")
        k = [str(BIN / "klpfleet")]
        for label, argv in [
            ("klpfleet status -o json", [*k, "status", "-o", "json"]),
            ("klpfleet hosts --state refused -o json", [*k, "hosts", "--state", "refused", "-o", "json"]),
            ("klpfleet host host-050000 -o json", [*k, "host", "host-050000", "-o", "json"]),
            (
                f"klpfleet rollout status 1 -o json ({args.rollout_hosts} hosts)",
                [*k, "rollout", "status", "1", "-o", "json"],
            ),
            ("ansible-inventory --list (fleet plugin)", [str(BIN / "ansible-inventory"), "-i", str(config), "--list"]),
        ]:
            seconds, size = timed(argv, env, runs=1 if "ansible-inventory" in label else 3)
            print(f"{label:62s} {seconds:7.2f} s  ({size / 1e6:.1f} MB out)", flush=True)


if __name__ == "__main__":
    main()
