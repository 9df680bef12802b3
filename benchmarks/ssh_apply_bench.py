"""Benchmark: the controller's CPU per host when a rollout applies a patch over real SSH.

50 simulated hosts (as in benchmarks/probe_bench.py), each reached over SSH through an sshd started here on
a loopback port, one wave of all of them, forks 20. `klpfleet rollout start --wait` is measured with each
engine: its process tree (driver, ansible-runner, ansible-playbook, its forks and ssh clients) is the
controller; the sshd sessions and the Python that runs the module on each "host" are not in that tree (they
are sshd's children), so the figure is the controller's own cost. Target (issue 15): <= 0.15 CPU-s per host.

    python benchmarks/ssh_apply_bench.py [--hosts 50] [--forks 20]
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_bench import start_sshd

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--forks", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klpfleet-ssh-bench-") as t:
        tmp = Path(t)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "client")], check=True)
        sshd, port, known = start_sshd(tmp, (tmp / "client.pub").read_text())
        (tmp / "known_hosts").write_text(known)
        try:
            rows = {engine: measure(tmp, port, engine, args.hosts, args.forks) for engine in ("ansible", "mitogen")}
        finally:
            sshd.terminate()
            sshd.wait()
    print(f"{args.hosts} SSH hosts (one loopback sshd), one wave, forks {args.forks}; the controller's process tree:")
    for engine, (wall, cpu) in rows.items():
        print(f"  --engine {engine:8} wall {wall:6.1f} s   CPU {cpu:6.1f} s   {cpu / args.hosts:.3f} CPU-s per host")
    print("target: <= 0.15 CPU-s per host")


def measure(tmp: Path, port: int, engine: str, hosts: int, forks: int) -> tuple[float, float]:
    from klpfleet.sim.fleet import create_host

    work = tmp / engine
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "KLPFLEET_DB": str(work / "k.db"),
        "KLPFLEET_RUN_DIR": str(work / "runs"),
        "KLPFLEET_ARTIFACTS": str(work / "art"),
        "KLPFLEET_KNOWN_HOSTS": str(tmp / "known_hosts"),
    }
    inventory = {}
    for i in range(1, hosts + 1):
        name = f"ssh-{i:02d}"
        create_host(work / "hosts" / name, speed=0.0)
        inventory[name] = {
            "ansible_host": "127.0.0.1",
            "ansible_port": port,
            "ansible_user": getpass.getuser(),
            "ansible_ssh_private_key_file": str(tmp / "client"),
            "klp_backend": "sim",
            "klp_sim_root": str(work / "hosts" / name),
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={tmp / 'known_hosts'} -o StrictHostKeyChecking=yes",
        }
    (work / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": inventory}}))
    (work / "lp.yml").write_text("name: livepatch_ssh_bench\nobjects: [{name: vmlinux, funcs: [f]}]\n")

    def klpfleet(*argv: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(BIN / "klpfleet"), *argv], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"klpfleet {' '.join(argv[:3])} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc

    klpfleet("db", "upgrade")
    klpfleet("inventory", "import", "-i", str(work / "inventory.yml"))
    klpfleet("probe", "--forks", str(forks))  # the kernel release each host runs, before any plan
    klpfleet("sim", "build-patch", str(work / "lp.yml"), "-o", str(work / "lp.ko"))
    klpfleet("patch", "add", str(work / "lp.ko"))
    created = klpfleet(
        "rollout", "create", "livepatch_ssh_bench", "--waves", "100%", "--forks", str(forks), "--engine", engine,
        "-o", "json",
    )  # fmt: skip
    rid = str(json.loads(created.stdout)["data"]["id"])
    before = os.times()
    start = time.perf_counter()
    klpfleet("rollout", "start", rid, "--wait")
    wall = time.perf_counter() - start
    after = os.times()
    status = json.loads(klpfleet("rollout", "status", rid, "-o", "json").stdout)["data"]
    applied = sum(w["outcomes"].get("applied", 0) for w in status["waves"])
    if applied != hosts:
        sys.exit(f"--engine {engine}: {applied} of {hosts} hosts applied: {status['waves']}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


if __name__ == "__main__":
    main()
