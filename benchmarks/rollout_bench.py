"""Benchmark: a 4-wave klpfleet rollout against a plain ansible-playbook run with the same serial list.

Both patch the same kind of simulated fleet (200 hosts, fresh for each run) with playbooks/apply.yml,
forks 20, the recorder writing to a database in both cases. The controller adds planning, per-wave
runs through ansible-runner, gate evaluation and its bookkeeping. Target (issue 5): ratio <= 1.10.

    python benchmarks/rollout_bench.py [--hosts 200] [--waves 1,10%,50%,100%]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def klpfleet(db: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "klpfleet"), "--db", db, *args], capture_output=True, text=True, env=env, check=True
    )


def setup(tmp: Path, name: str, hosts: int, env: dict[str, str]) -> tuple[str, Path]:
    db = str(tmp / f"{name}.db")
    (tmp / f"{name}.fleet.yml").write_text(f"hosts: {hosts}\nspeed: 0\nlabels: {{zone: [a, b, c]}}\n")
    klpfleet(db, "db", "upgrade", env=env)
    klpfleet(db, "sim", "fleet", "create", str(tmp / name), "--spec", str(tmp / f"{name}.fleet.yml"), env=env)
    klpfleet(db, "inventory", "import", "-i", str(tmp / name / "inventory.yml"), env=env)
    subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(tmp / name / "inventory.yml"),
            str(ROOT / "playbooks" / "gather.yml"),
            "-f",
            "20",
        ],
        env={**env, "KLPFLEET_DB": db},
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    klpfleet(db, "patch", "add", str(tmp / "lp.ko"), env=env)
    return db, tmp / name / "inventory.yml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--waves", default="1,10%,50%,100%")
    args = parser.parse_args()
    serial = [int(w) if w.isdigit() else w for w in args.waves.split(",")]
    with tempfile.TemporaryDirectory(prefix="klpfleet-bench-") as t:
        tmp = Path(t)
        env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "KLPFLEET_ARTIFACTS": str(tmp / "art"),
            "KLPFLEET_RUN_DIR": str(tmp / "runs"),
        }
        (tmp / "lp.yml").write_text(
            "name: livepatch_bench\nreplace: true\nobjects: [{name: vmlinux, funcs: [tcp_send_challenge_ack]}]\n"
        )
        klpfleet(str(tmp / "x.db"), "sim", "build-patch", str(tmp / "lp.yml"), "-o", str(tmp / "lp.ko"), env=env)
        sha = subprocess.run(
            ["sha256sum", str(tmp / "lp.ko")], capture_output=True, text=True, check=True
        ).stdout.split()[0]
        print(f"setting up two fleets of {args.hosts} simulated hosts ...", flush=True)
        plain_db, plain_inv = setup(tmp, "plain", args.hosts, env)
        ctl_db, _ = setup(tmp, "ctl", args.hosts, env)

        start = time.perf_counter()
        subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(plain_inv),
                str(ROOT / "playbooks" / "apply.yml"),
                "-f",
                "20",
                "-e",
                json.dumps({"klp_patch_src": str(tmp / "lp.ko"), "klp_patch_sha256": sha, "klp_serial": serial}),
            ],
            env={**env, "KLPFLEET_DB": plain_db},
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        plain = time.perf_counter() - start

        created = klpfleet(
            ctl_db,
            "rollout",
            "create",
            "livepatch_bench",
            "--waves",
            args.waves,
            "--forks",
            "20",
            "-o",
            "json",
            env=env,
        )
        rid = json.loads(created.stdout)["data"]["id"]
        start = time.perf_counter()
        klpfleet(ctl_db, "rollout", "start", str(rid), "--wait", env=env)
        controller = time.perf_counter() - start
        status = json.loads(klpfleet(ctl_db, "rollout", "status", str(rid), "-o", "json", env=env).stdout)["data"]
        applied = sum(w["outcomes"].get("applied", 0) for w in status["waves"])
        ratio = controller / plain
        print(f"hosts {args.hosts}, waves {args.waves} ({len(status['waves'])} waves), forks 20")
        print(f"plain ansible-playbook with serial: {plain:6.1f} s")
        print(f"klpfleet rollout start --wait:      {controller:6.1f} s  ({applied} hosts applied)")
        print(f"ratio: {ratio:.3f}   target <= 1.10   {'met' if ratio <= 1.10 else 'MISSED'}")
        sys.exit(0 if ratio <= 1.10 and applied == args.hosts else 1)


if __name__ == "__main__":
    main()
