"""Benchmark: analysis at fleet scale. A running rollout whose current wave has 10,000 patched hosts (of 100,000):

- one scrape of klpfleet's metrics (`klpfleet metrics`, the dashboard's /metrics): its time, its size and the
  klpfleet_rollout_host series a canary-against-control join reads;
- the scope a wave's analysis reads (the wave's patched hosts and the control hosts) from the database;
- `$wave_hosts` over 10,000 names: refused (a regex that size is the wrong tool), how fast.

    python benchmarks/analysis_bench.py [--hosts 100000] [--wave 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from status_bench import seed

from klpfleet.analysis.checks import parse_checks
from klpfleet.analysis.measure import take
from klpfleet.analysis.placeholders import Scope
from klpfleet.controller.policy import parse_duration
from klpfleet.controller.store import RolloutStore
from klpfleet.db.engine import open_database
from klpfleet.reads.analysis_metrics import analysis_metrics
from klpfleet.reads.metrics import exposition
from klpfleet.states import Outcome


def add_rollout(path: Path, hosts: int, wave: int) -> None:
    """Rollout 1 of patch 1: wave 1 one host, wave 2 `wave` hosts (current, all applied), wave 3 the rest pending."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    con = sqlite3.connect(path)
    with con:
        con.execute(
            "INSERT INTO rollouts (id, patch_id, status, selector, policy, promoted_full, gate_overrides, current_wave,"
            " created_by, created_at, started_at, lease_token) VALUES (1, 1, 'running', 'all', '{}', 0, '[]', 1,"
            " 'bench', ?, ?, 0)",
            (now, now),
        )
        con.executemany(
            'INSERT INTO waves (id, rollout_id, "index", status) VALUES (?, 1, ?, ?)',
            [(1, 0, "completed"), (2, 1, "running"), (3, 2, "pending")],
        )
        rows = []
        for h in range(1, hosts + 1):
            wave_id = 1 if h == 1 else (2 if h <= wave + 1 else 3)
            done = wave_id < 3
            rows.append(
                (h, wave_id, h, "done" if done else "pending", "applied" if done else None, 0.5 + (h % 100) / 50)
            )
        con.executemany(
            "INSERT INTO wave_hosts (id, wave_id, rollout_id, host_id, status, outcome, attempts, transition_seconds)"
            " VALUES (?, ?, 1, ?, ?, ?, 1, ?)",
            [(i, w, h, s, o, t if o else None) for i, w, h, s, o, t in rows],
        )


def timed(fn, runs):  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--wave", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        seed(path, args.hosts)
        add_rollout(path, args.hosts, args.wave)
        db = open_database(f"sqlite:///{path}")
        seconds, text = timed(lambda: exposition(db.engine.connect), args.runs)
        lines = text.decode().splitlines()
        roles = {role: sum(1 for line in lines if f'role="{role}"' in line) for role in ("wave", "patched", "control")}
        print(f"one scrape of klpfleet's metrics: {seconds * 1000:.0f} ms, {len(text) / 1e6:.1f} MB")
        print(
            f"  klpfleet_rollout_host series: wave {roles['wave']}, patched {roles['patched']}, "
            f"control {roles['control']}"
        )
        with db.engine.connect() as conn:
            seconds, _ = timed(lambda: analysis_metrics(conn), args.runs)
        print(f"  of which the rollout's series (host roles, transition times, checks): {seconds * 1000:.0f} ms")
        store = RolloutStore(db, 1)
        seconds, scope = timed(
            lambda: (store.hosts_where_outcome(2, Outcome.APPLIED), store.control_hosts(1)), args.runs
        )
        print(
            f"a wave's scope from the database: {seconds * 1000:.0f} ms ({len(scope[0])} wave, {len(scope[1])} control)"
        )
        check = parse_checks(
            [{"name": "c", "query": 'avg(x{host=~"$wave_hosts"})', "condition": "< 1"}], parse_duration
        )[0]
        big = Scope(1, 2, tuple(scope[0]), tuple(scope[1][:10]))
        seconds, measured = timed(lambda: take(check, None, big, []), args.runs)
        print(
            f"$wave_hosts over {len(scope[0])} names: {measured.result} in {seconds * 1000:.1f} ms ({measured.reason})"
        )


if __name__ == "__main__":
    main()
