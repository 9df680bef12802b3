"""Benchmark: a klpfleet rollout against the playbook a user writes by hand, and against an earlier klpfleet.

Each contender patches its own fresh fleet of simulated hosts (the same size, waves and forks), measured in
one run on this machine, wall time and the CPU of the whole process tree (controller, Ansible and its
forks; on a simulated fleet that includes the host-side module too):

- by hand: benchmarks/handwritten.yml with `serial` (file + copy + the patch module reading the copy), Ansible
  defaults (no pipelining, no Mitogen, no recorder): what users write today;
- klpfleet at an earlier commit (--baseline REV, run from a git worktree; default: the last commit before
  the one-task apply and the Mitogen engine), `rollout create` + `rollout start --wait`;
- klpfleet now with `--engine ansible`, and with the default engine (Mitogen when installed).

Targets (issue 15): klpfleet <= 0.5x the hand-written playbook and <= 0.5x the earlier klpfleet.

    python benchmarks/rollout_bench.py [--hosts 40] [--waves 1,25%,100%] [--forks 10] [--baseline REV|none]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BASELINE = "c8e96a0"  # before the one-task apply and the engine


def run(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv[:6])} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc


def timed(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process tree)."""
    before = os.times()
    start = time.perf_counter()
    run(argv, env, cwd)
    wall = time.perf_counter() - start
    after = os.times()
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


class Contender:
    def __init__(self, name: str, tmp: Path, hosts: int, env: dict[str, str], code: Path | None = None) -> None:
        self.name, self.dir, self.env = name, tmp / name, dict(env)
        # An earlier klpfleet runs from its own checkout (its own collection and playbooks).
        self.cli = [sys.executable, "-m", "klpfleet.cli.main"]
        if code is not None:
            self.env["PYTHONPATH"] = str(code)
        self.db = str(self.dir / "k.db")
        self.dir.mkdir()
        (self.dir / "fleet.yml").write_text(f"hosts: {hosts}\nspeed: 0\nlabels: {{zone: [a, b, c]}}\n")
        self.klpfleet("db", "upgrade")
        self.klpfleet("sim", "fleet", "create", str(self.dir / "fleet"), "--spec", str(self.dir / "fleet.yml"))
        self.inventory = self.dir / "fleet" / "inventory.yml"

    def klpfleet(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([*self.cli, "--db", self.db, *args], self.env, cwd=self.dir)

    def rollout(self, ko: Path, waves: str, forks: int, *options: str) -> tuple[float, float, int]:
        self.klpfleet("inventory", "import", "-i", str(self.inventory))
        run(
            [str(BIN / "ansible-playbook"), "-i", str(self.inventory), str(ROOT / "playbooks" / "gather.yml")],
            {**self.env, "KLPFLEET_DB": self.db, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        )
        self.klpfleet("patch", "add", str(ko))
        created = self.klpfleet(
            "rollout", "create", "livepatch_bench", "--waves", waves, "--forks", str(forks), *options, "-o", "json"
        )
        rid = str(json.loads(created.stdout)["data"]["id"])
        wall, cpu = timed([*self.cli, "--db", self.db, "rollout", "start", rid, "--wait"], self.env, cwd=self.dir)
        status = json.loads(self.klpfleet("rollout", "status", rid, "-o", "json").stdout)["data"]
        return wall, cpu, sum(w["outcomes"].get("applied", 0) for w in status["waves"])

    def by_hand(self, ko: Path, waves: str, forks: int) -> tuple[float, float]:
        serial = [int(w) if w.isdigit() else w for w in waves.split(",")]
        (self.dir / "defaults.cfg").write_text(f"[defaults]\ncollections_path = {ROOT / 'collections'}\n")
        extra = {
            "bench_ko": str(ko),
            "bench_sha256": hashlib.sha256(ko.read_bytes()).hexdigest(),
            "bench_serial": serial,
        }
        argv = [str(BIN / "ansible-playbook"), "-i", str(self.inventory), str(ROOT / "benchmarks" / "handwritten.yml")]
        env = {**self.env, "ANSIBLE_CONFIG": str(self.dir / "defaults.cfg")}
        return timed([*argv, "-f", str(forks), "-e", json.dumps(extra)], env)


def baseline_checkout(tmp: Path, rev: str) -> Path | None:
    if rev == "none":
        return None
    target = tmp / "baseline"
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(target), rev], capture_output=True
    )
    if proc.returncode != 0:
        print(f"(no baseline: git worktree add {rev} failed: {proc.stderr.decode().strip()[:200]})")
        return None
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=40)
    parser.add_argument("--waves", default="1,25%,100%")
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the earlier klpfleet, or none")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klpfleet-bench-") as t:
        tmp = Path(t)
        env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "KLPFLEET_ARTIFACTS": str(tmp / "art"),
            "KLPFLEET_RUN_DIR": str(tmp / "runs"),
        }
        env.pop("ANSIBLE_CONFIG", None)
        (tmp / "lp.yml").write_text(
            "name: livepatch_bench\nobjects: [{name: vmlinux, funcs: [tcp_send_challenge_ack]}]\n"
        )
        ko = tmp / "lp.ko"
        run([sys.executable, "-m", "klpfleet.cli.main", "sim", "build-patch", str(tmp / "lp.yml"), "-o", str(ko)], env)
        code = baseline_checkout(tmp, args.baseline)
        try:
            print(f"{args.hosts} simulated hosts per contender, waves {args.waves}, forks {args.forks}", flush=True)
            rows: dict[str, tuple[float, float]] = {}
            wall, cpu = Contender("by-hand", tmp, args.hosts, env).by_hand(ko, args.waves, args.forks)
            rows["hand-written playbook (copy + load, Ansible defaults)"] = (wall, cpu)
            contenders = [
                ("klpfleet now, --engine ansible", None, ("--engine", "ansible")),
                ("klpfleet now (default engine)", None, ()),
            ]
            if code is not None:
                contenders.insert(0, (f"klpfleet at {args.baseline}", code, ()))
            for label, checkout, options in contenders:
                name = label.split(",")[0].replace(" ", "-").replace("(", "").replace(")", "")
                wall, cpu, applied = Contender(name + str(len(rows)), tmp, args.hosts, env, checkout).rollout(
                    ko, args.waves, args.forks, *options
                )
                if applied != args.hosts:
                    sys.exit(f"{label}: {applied} of {args.hosts} hosts applied")
                rows[label] = (wall, cpu)
        finally:
            if code is not None:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(code)], capture_output=True
                )
    hand = rows["hand-written playbook (copy + load, Ansible defaults)"]
    now = rows["klpfleet now (default engine)"]
    print(f"{'':58} {'wall s':>7} {'CPU s':>7} {'CPU/host':>9}")
    for label, (wall, cpu) in rows.items():
        print(f"{label:58} {wall:7.1f} {cpu:7.1f} {cpu / args.hosts:9.3f}")
    print(f"klpfleet now / hand-written: wall {now[0] / hand[0]:.2f}x, CPU {now[1] / hand[1]:.2f}x   (target <= 0.5x)")
    earlier = rows.get(f"klpfleet at {args.baseline}")
    if earlier:
        print(
            f"klpfleet now / klpfleet at {args.baseline}: wall {now[0] / earlier[0]:.2f}x, "
            f"CPU {now[1] / earlier[1]:.2f}x   (target <= 0.5x)"
        )


if __name__ == "__main__":
    main()
