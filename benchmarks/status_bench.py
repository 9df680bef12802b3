"""Benchmark: `klpfleet status -o json` over 100,000 hosts x 3 patches in SQLite.

Compares the whole process (interpreter start, imports, queries, JSON) with the same aggregation done
in raw SQL through Python's sqlite3 in-process, and times `klpfleet --help` cold start.
Targets (issue 2): status <= 1.0 s and <= 5x raw SQL; --help <= 0.3 s. With --cves each patch names a CVE,
so status also counts exposure per CVE (and `klpfleet cves -o json` is timed); with --vex also the VEX documents
(`cves -o openvex` and `-o cyclonedx`, one statement per host and CVE): wall time, peak memory, size.

    python benchmarks/status_bench.py [--hosts 100000] [--runs 5] [--cves] [--vex]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from klpfleet.db.engine import open_database
from klpfleet.db.migrate import upgrade

STATES = ["applied"] * 90 + ["absent"] * 5 + ["refused"] * 3 + ["stalled", "failed"]


def seed(path: Path, hosts: int, patches: int = 3, cves: bool = False) -> None:
    db = open_database(f"sqlite:///{path}", create=True)
    upgrade(db)
    db.engine.dispose()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    rnd = random.Random(42)
    con = sqlite3.connect(path)
    with con:
        con.executemany(
            "INSERT INTO patches (id, name, sha256, vermagic, kernel_release, depends, size, cves, path, added_at)"
            " VALUES (?, ?, ?, 'v', '6.1.0-56-amd64', '[]', 1000, ?, '/x', ?)",
            [
                (p, f"livepatch_{p}", f"{p:064x}", json.dumps([f"CVE-2026-{1000 + p}"] if cves else []), now)
                for p in range(1, patches + 1)
            ],
        )
        con.executemany(
            "INSERT INTO hosts (id, name, address, vars, kernel_release, reachable, created_at, updated_at)"
            " VALUES (?, ?, ?, '{}', ?, ?, ?, ?)",
            [
                (
                    h,
                    f"host-{h:06d}",
                    f"10.{h >> 16}.{(h >> 8) & 255}.{h & 255}",
                    rnd.choice(["6.1.0-56-amd64", "6.1.0-55-amd64", "6.1.0-99-amd64"]),
                    rnd.random() > 0.001,
                    now,
                    now,
                )
                for h in range(1, hosts + 1)
            ],
        )
        con.executemany(
            "INSERT INTO host_patches (host_id, patch_id, state, objects, stalled_tasks, attempts, observed_at,"
            " observed_by) VALUES (?, ?, ?, '{}', '[]', 1, ?, 'bench')",
            [(h, p, rnd.choice(STATES), now) for h in range(1, hosts + 1) for p in range(1, patches + 1)],
        )
    con.execute("ANALYZE")
    con.close()


EXPOSURE_SQL = (
    "SELECT h.kernel_release, h.reachable, ph.c1, ph.s1, ph.c2, ph.s2, ph.c3, ph.s3, count(*) FROM ("
    "SELECT host_id, "
    + ", ".join(
        f"max(CASE WHEN patch_id = {p} AND state IN ('applied', 'forced') THEN 1 ELSE 0 END) AS c{p}, "
        f"max(CASE WHEN patch_id = {p} THEN state END) AS s{p}"
        for p in (1, 2, 3)
    )
    + " FROM host_patches WHERE patch_id IN (1, 2, 3) GROUP BY host_id) ph JOIN hosts h ON h.id = ph.host_id "
    "GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"
)


def raw_sql(path: Path, cves: bool = False) -> dict:
    """The same aggregation status performs, by hand, in-process (with --cves, its exposure pass too)."""
    con = sqlite3.connect(path)
    out = {
        "hosts": con.execute("SELECT count(*), sum(reachable = 1), sum(reachable = 0) FROM hosts").fetchone(),
        "kernels": con.execute("SELECT kernel_release, count(*) FROM hosts GROUP BY kernel_release").fetchall(),
        "states": con.execute("SELECT patch_id, state, count(*) FROM host_patches GROUP BY patch_id, state").fetchall(),
        "attention": con.execute(
            "SELECT h.name, p.name, hp.state FROM host_patches hp JOIN hosts h ON h.id = hp.host_id "
            "JOIN patches p ON p.id = hp.patch_id WHERE hp.state IN ('refused','stalled','failed','unreachable',"
            "'forced','drift') ORDER BY hp.observed_at DESC, h.name LIMIT 50"
        ).fetchall(),
        "attention_counts": con.execute(
            "SELECT state, count(*) FROM host_patches WHERE state IN ('refused','stalled','failed','unreachable',"
            "'forced','drift') GROUP BY state"
        ).fetchall(),
    }
    if cves:
        out["exposure"] = con.execute(EXPOSURE_SQL).fetchall()
    json.dumps(out)
    con.close()
    return out


def best(fn, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def vex_document(klp: list[str], path: Path, fmt: str, hosts: int) -> None:
    """One `klpfleet cves -o FMT` to a file: its wall time, the process's peak memory, the document's size."""
    import resource

    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.run([*klp, "--db", str(path), "cves", "-o", fmt], stdout=out, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - start
        assert proc.returncode == 0, proc.stderr
        size = out.seek(0, 2)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far, in MiB
    statements = hosts * 3
    print(
        f"klpfleet cves -o {fmt:<9} (process): {seconds:.2f} s for {statements} statements "
        f"({statements / seconds:,.0f}/s), {size / 1e6:.0f} MB, peak RSS of the largest child so far {peak:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cves", action="store_true", help="each patch names a CVE (status counts exposure)")
    parser.add_argument("--vex", action="store_true", help="also time the VEX documents (implies --cves)")
    args = parser.parse_args()
    args.cves = args.cves or args.vex
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        t0 = time.perf_counter()
        seed(path, args.hosts, cves=args.cves)
        print(
            f"seeded {args.hosts} hosts x 3 patches in {time.perf_counter() - t0:.1f} s "
            f"({path.stat().st_size / 1e6:.0f} MB)"
        )
        klp = [sys.executable, "-m", "klpfleet.cli.main"]

        def status() -> None:
            proc = subprocess.run([*klp, "--db", str(path), "status", "-o", "json"], capture_output=True, check=False)
            assert proc.returncode in (0, 1, 2), proc.stderr
            json.loads(proc.stdout)

        def help_() -> None:
            subprocess.run([*klp, "--help"], capture_output=True, check=True)

        status()  # warm the page cache: we measure klpfleet, not the disk
        s_best, s_med = best(status, args.runs)
        r_best, r_med = best(lambda: raw_sql(path, args.cves), args.runs)
        h_best, h_med = best(help_, args.runs)
        ratio = s_best / r_best
        print(f"klpfleet status -o json (process): best {s_best:.3f} s, median {s_med:.3f} s   target <= 1.0 s")
        print(f"raw SQL via sqlite3 (in-process):  best {r_best:.3f} s, median {r_med:.3f} s")
        print(f"ratio status / raw SQL:            {ratio:.2f}x   target <= 5x")
        print(f"klpfleet --help (process):         best {h_best:.3f} s, median {h_med:.3f} s   target <= 0.3 s")
        if args.cves:

            def cves() -> None:
                proc = subprocess.run([*klp, "--db", str(path), "cves", "-o", "json"], capture_output=True, check=False)
                assert proc.returncode in (0, 1, 2), proc.stderr
                json.loads(proc.stdout)

            c_best, c_med = best(cves, args.runs)
            print(f"klpfleet cves -o json (process):   best {c_best:.3f} s, median {c_med:.3f} s")
        if args.vex:
            for fmt in ("openvex", "cyclonedx"):
                vex_document(klp, path, fmt, args.hosts)
        ok = s_best <= 1.0 and ratio <= 5 and h_best <= 0.3
        print("targets met" if ok else "TARGETS MISSED")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
