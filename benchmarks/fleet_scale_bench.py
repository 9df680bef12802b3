"""Benchmark: plan, run and report a 5-wave rollout over a simulated fleet of 1,000 hosts.

Prints wall time per phase, CPU (the klpfleet driver process alone, and the whole process tree: driver,
ansible-runner, ansible-playbook and its forks, which on a simulated fleet also run the host-side module),
the peak memory of the tree (proportional set sizes summed, sampled from /proc every 0.2 s) and the
driver's resident set, and per-host
costs. docs/scale.md turns these figures into a model for 10,000 and 100,000 hosts.

    python benchmarks/fleet_scale_bench.py [--hosts 1000] [--waves 1,1%,10%,50%,100%] [--forks 20] [--db URL]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def klpfleet(db: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "klpfleet"), "--db", db, *args], capture_output=True, text=True, env=env, check=True
    )


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    """Proportional set size: shared pages divided among their users, so a tree's sum is honest."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return _rss(pid)


def _cpu(pid: int) -> float:
    """User + system seconds of a live process (its own, not its children's)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


class TreeSampler(threading.Thread):
    """Peak memory of a process and all its descendants (PSS summed), and of the process alone (RSS)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_tree = 0
        self.peak_root = 0
        self.root_cpu = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            tree = _children()
            pids, todo = [], [self.pid]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo.extend(tree.get(pid, []))
            self.peak_tree = max(self.peak_tree, sum(_pss(p) for p in pids))
            self.peak_root = max(self.peak_root, _rss(self.pid))
            self.root_cpu = max(self.root_cpu, _cpu(self.pid))
            self.stop.wait(0.2)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, TreeSampler]:
    """Run a command; return (wall, tree CPU seconds, sampler)."""
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    _out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    after = os.times()
    if proc.returncode not in (0, 1):
        sys.exit(f"{argv[1:4]} failed: {err.strip()}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--waves", default="1,1%,10%,50%,100%")
    parser.add_argument("--forks", type=int, default=20)
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klpfleet-scale-") as t:
        tmp = Path(t)
        db = args.db or f"sqlite:///{tmp / 'k.db'}"
        env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "KLPFLEET_ARTIFACTS": str(tmp / "art"),
            "KLPFLEET_RUN_DIR": str(tmp / "runs"),
            "KLPFLEET_DB": db,
        }
        print(f"setting up {args.hosts} simulated hosts in 3 zones ...", flush=True)
        t0 = time.perf_counter()
        (tmp / "fleet.yml").write_text(f"hosts: {args.hosts}\nspeed: 0\nlabels: {{zone: [a, b, c]}}\n")
        (tmp / "lp.yml").write_text(
            "name: livepatch_scale\nreplace: true\nobjects: [{name: vmlinux, funcs: [tcp_send_challenge_ack]}]\n"
        )
        klpfleet(db, "db", "upgrade", env=env)
        klpfleet(db, "sim", "fleet", "create", str(tmp / "fleet"), "--spec", str(tmp / "fleet.yml"), env=env)
        klpfleet(db, "sim", "build-patch", str(tmp / "lp.yml"), "-o", str(tmp / "lp.ko"), env=env)
        klpfleet(db, "patch", "add", str(tmp / "lp.ko"), env=env)
        import_wall, _, _ = timed(
            [str(BIN / "klpfleet"), "inventory", "import", "-i", str(tmp / "fleet" / "inventory.yml")], env
        )
        gather_wall, gather_cpu, _ = timed(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(tmp / "fleet" / "inventory.yml"),
                str(ROOT / "playbooks" / "gather.yml"),
                "-f",
                str(args.forks),
            ],
            env,
        )
        print(f"setup {time.perf_counter() - t0:.0f} s", flush=True)

        plan_wall, plan_cpu, plan_s = timed(
            [
                str(BIN / "klpfleet"),
                "rollout",
                "create",
                "livepatch_scale",
                "--waves",
                args.waves,
                "--forks",
                str(args.forks),
                "-o",
                "json",
            ],
            env,
        )
        rid = json.loads(klpfleet(db, "rollout", "list", "-o", "json", env=env).stdout)["data"][0]["id"]
        run_wall, run_cpu, run_s = timed([str(BIN / "klpfleet"), "rollout", "start", str(rid), "--wait"], env)
        report_wall, _, _ = timed([str(BIN / "klpfleet"), "rollout", "status", str(rid), "-o", "json"], env)
        status = json.loads(klpfleet(db, "rollout", "status", str(rid), "-o", "json", env=env).stdout)["data"]
        applied = sum(w["outcomes"].get("applied", 0) for w in status["waves"])
        n = args.hosts
        mib = 1024 * 1024
        print(f"\nhosts {n}, waves {args.waves} -> {len(status['waves'])} waves, forks {args.forks}")
        print(f"state: {status['status']}, {applied} hosts applied")
        print(f"inventory import        {import_wall:7.1f} s")
        print(f"gather (ansible)        {gather_wall:7.1f} s   tree CPU {gather_cpu:7.1f} s")
        print(
            f"plan (rollout create)   {plan_wall:7.2f} s   tree CPU {plan_cpu:7.2f} s   "
            f"peak RSS {plan_s.peak_root / mib:.0f} MiB"
        )
        print(
            f"run (rollout start)     {run_wall:7.1f} s   tree CPU {run_cpu:7.1f} s   "
            f"driver CPU {run_s.root_cpu:6.1f} s"
        )
        print(
            f"   peak memory: driver RSS {run_s.peak_root / mib:.0f} MiB, "
            f"whole tree PSS {run_s.peak_tree / mib:.0f} MiB"
        )
        print(f"report (rollout status) {report_wall:7.2f} s")
        print(
            f"per host: wall {run_wall / n * 1000:.0f} ms, tree CPU {run_cpu / n * 1000:.0f} ms, "
            f"driver CPU {run_s.root_cpu / n * 1000:.1f} ms"
        )
        sys.exit(0 if applied == n else 1)


if __name__ == "__main__":
    main()
