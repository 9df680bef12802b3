"""Benchmark: the pre-flight and the function map at fleet scale, as whole processes.

Seeds the fleet of db_scale_bench (100,000 hosts x 10 patches) with what each patch patches and each host's
sysfs functions (two functions per patch, one of them shared by all ten: a ten-deep stack on every host), then
times `klpfleet patch check` over the whole fleet, `klpfleet functions` fleet-wide and for one host, and
`klpfleet hosts --reboot-required`, and prints the peak memory of each.

    python benchmarks/preflight_bench.py [--hosts 100000] [--patches 10] [--db URL]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from db_scale_bench import BIN, ROOT, rows, seed

from klpfleet.db.engine import open_database


def add_contents(url: str, patches: int) -> None:
    db = open_database(url)
    with db.engine.begin() as conn:
        for p in range(1, patches + 1):
            funcs = [f"func_{p}", "common_func"]
            contents = {
                "format": "klp_patch",
                "objects": {"vmlinux": [{"function": f, "sympos": 0} for f in funcs]},
                "callbacks": {},
                "replace": False,
                "replace_source": "module data",
                "states": [{"id": 1, "version": p}],
            }
            conn.execute(
                text("UPDATE patches SET contents = :c, signed = :s WHERE id = :p"),
                {"c": json.dumps(contents), "s": True, "p": p},
            )
            listed = json.dumps({"vmlinux": [f"{f},1" for f in funcs]})
            conn.execute(text("UPDATE host_patches SET functions = :f WHERE patch_id = :p"), {"f": listed, "p": p})


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, check=False, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{argv}: rc {proc.returncode}: {proc.stderr.decode()[-500:]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return seconds, len(proc.stdout), peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--patches", type=int, default=10)
    parser.add_argument("--db", help="a database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klpfleet-preflight-") as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'scale.db'}"
        start = time.perf_counter()
        seed(url, rows(args.hosts, args.patches, 1, min(args.hosts, 1000)))
        add_contents(url, args.patches)
        print(f"seeding took {time.perf_counter() - start:.0f} s", flush=True)
        env = {**os.environ, "KLPFLEET_DB": url, "PATH": f"{BIN}:{os.environ['PATH']}"}
        k = [str(BIN / "klpfleet")]
        middle = f"host-{args.hosts // 2:06d}"
        for label, argv in [
            (
                f"klpfleet patch check livepatch_1 ({args.hosts} hosts)",
                [*k, "patch", "check", "livepatch_1", "-o", "json"],
            ),
            ("klpfleet functions -o json (fleet-wide)", [*k, "functions", "-o", "json"]),
            (f"klpfleet functions {middle} -o json", [*k, "functions", middle, "-o", "json"]),
            ("klpfleet hosts --reboot-required -o json", [*k, "hosts", "--reboot-required", "-o", "json"]),
        ]:
            seconds, size, peak = timed(argv, env)
            print(f"{label:58s} {seconds:7.2f} s  ({size / 1e6:.1f} MB out, children's peak RSS {peak:.0f} MB)")


if __name__ == "__main__":
    main()
