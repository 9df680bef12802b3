"""Benchmark: rollouts through execution nodes against the same rollout run locally.

Three execution nodes on this machine (Unix users klpnode1..3, each with its own virtualenv of ansible-core
and ansible-runner, behind a loopback sshd: tests/nodehelpers.py builds them; needs root). For each setup a
fresh simulated fleet and database, one `klpfleet rollout start --wait` (waves 1,10%,100%, forks 20, Ansible's
own strategy everywhere so that only where Ansible runs differs):

- controller CPU: the process tree of `klpfleet rollout start` (driver, ansible-runner's transmit/process,
  paramiko); with nodes, the jobs' ansible-playbook and modules are sshd's children, not the controller's;
- machine CPU: every process on the machine (/proc/stat), nodes included: on this machine nodes and "hosts"
  share the controller's two cores, so this is what the run cost in all;
- wall time.

    sudo python benchmarks/nodes_bench.py [--hosts 600] [--setups local,1,3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))


def machine_cpu_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=600)
    parser.add_argument("--forks", type=int, default=20)
    parser.add_argument("--setups", default="local,1,3", help="local, 1 (one node), 3 (three nodes by zone)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("nodes_bench: run as root (it creates the node users klpnode1..3)")
    from tests.nodehelpers import NodeLab

    base = Path(tempfile.mkdtemp(prefix="klpfleet-nodes-bench-", dir="/var/tmp"))
    base.chmod(0o755)
    (base / "lab").mkdir()
    lab = NodeLab(base / "lab")
    rows = {}
    try:
        for setup in args.setups.split(","):
            rows[setup] = measure(lab, base / f"setup-{setup}", setup, args.hosts, args.forks)
    finally:
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.hosts} simulated hosts, waves 1,10%,100%, forks {args.forks} per run, 2 cores shared by everything:")
    for setup, (wall, tree, machine) in rows.items():
        name = {"local": "local (no nodes)", "1": "1 execution node", "3": "3 execution nodes"}[setup]
        print(
            f"  {name:18} wall {wall:6.1f} s   controller CPU {tree:6.1f} s ({1000 * tree / args.hosts:5.1f} ms/host)"
            f"   machine CPU {machine:6.1f} s ({1000 * machine / args.hosts:5.1f} ms/host)"
        )


def measure(lab, work: Path, setup: str, hosts: int, forks: int) -> tuple[float, float, float]:
    from klpfleet.sim.fleet import create_fleet
    from tests.nodehelpers import NODES, give_hosts

    work.mkdir(parents=True)
    work.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "KLPFLEET_DB": str(work / "k.db"),
        "KLPFLEET_RUN_DIR": str(work / "runs"),
        "KLPFLEET_ARTIFACTS": str(work / "art"),
    }
    create_fleet(work / "fleet", {"hosts": hosts, "labels": {"zone": ["a", "b", "c"]}, "speed": 0})
    width = max(2, len(str(hosts)))
    names = [f"sim-{i:0{width}d}" for i in range(1, hosts + 1)]
    if setup != "local":
        give_hosts(work / "fleet", {n: NODES[i % 3] if setup == "3" else NODES[0] for i, n in enumerate(names)})
    (work / "lp.yml").write_text("name: livepatch_nodes_bench\nobjects: [{name: vmlinux, funcs: [f]}]\n")

    def klpfleet(*argv: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(BIN / "klpfleet"), *argv], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"klpfleet {' '.join(argv[:3])} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc

    klpfleet("db", "upgrade")
    klpfleet("inventory", "import", "-i", str(work / "fleet" / "inventory.yml"))
    klpfleet("probe", "--forks", str(forks))
    klpfleet("sim", "build-patch", str(work / "lp.yml"), "-o", str(work / "lp.ko"))
    klpfleet("patch", "add", str(work / "lp.ko"))
    if setup != "local":
        for user, zone in zip(NODES[: int(setup)], "abc", strict=False):
            serves = ["--serves", f"zone={zone}"] if setup == "3" else []
            klpfleet("node", "add", user, *lab.add_args(user), *serves)
    created = klpfleet(
        "rollout", "create", "livepatch_nodes_bench", "--waves", "1,10%,100%", "--forks", str(forks),
        "--engine", "ansible", "-o", "json",
    )  # fmt: skip
    rid = str(json.loads(created.stdout)["data"]["id"])
    before, machine_before = os.times(), machine_cpu_seconds()
    start = time.perf_counter()
    klpfleet("rollout", "start", rid, "--wait")
    wall = time.perf_counter() - start
    after, machine_after = os.times(), machine_cpu_seconds()
    status = json.loads(klpfleet("rollout", "status", rid, "-o", "json").stdout)["data"]
    applied = sum(w["outcomes"].get("applied", 0) for w in status["waves"])
    if applied != hosts:
        sys.exit(f"{setup}: {applied} of {hosts} hosts applied: {[w['outcomes'] for w in status['waves']]}")
    tree = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, tree, machine_after - machine_before


if __name__ == "__main__":
    main()
