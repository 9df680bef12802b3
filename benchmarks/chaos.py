"""Chaos: kill the controller with SIGKILL at random points of a rollout, resume, and check the result.

Each trial builds a fresh simulated fleet (one host refusing, one stalling), starts a rollout, kills the
controller after a random delay, resumes it (as often as needed) until it completes, then checks:
- `klpfleet probe` reads every host and finds no drift: the database equals what the hosts report;
- no host that completed was patched twice (each kernel's log has one "enabling patch");
- every wave's decisions are in the event log exactly once.

    python benchmarks/chaos.py [--trials 50] [--seed 1] [--hosts 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PATCH = "livepatch_chaos"
FLEET = """hosts: {hosts}
speed: 0
labels: {{zone: [a, b]}}
faults:
  sim-03: {{refuse: {{patch: "*", object: vmlinux, errno: ENODEV}}}}
  sim-06: {{stall: {{function: "*", seconds: forever}}}}
"""


def klp(db: str, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "klpfleet"), "--db", db, *args], capture_output=True, text=True, env=env, check=check
    )


def trial(tmp: Path, hosts: int, kill_after: float, env: dict[str, str]) -> list[str]:
    db = str(tmp / "k.db")
    (tmp / "fleet.yml").write_text(FLEET.format(hosts=hosts))
    (tmp / "lp.yml").write_text(f"name: {PATCH}\nobjects: [{{name: vmlinux, funcs: [f]}}]\n")
    klp(db, "db", "upgrade", env=env)
    klp(db, "sim", "fleet", "create", str(tmp / "fleet"), "--spec", str(tmp / "fleet.yml"), env=env)
    klp(db, "inventory", "import", "-i", str(tmp / "fleet" / "inventory.yml"), env=env)
    klp(db, "probe", env=env, check=False)  # learn every kernel release
    klp(db, "sim", "build-patch", str(tmp / "lp.yml"), "-o", str(tmp / "lp.ko"), env=env)
    klp(db, "patch", "add", str(tmp / "lp.ko"), env=env)
    rid = json.loads(
        klp(
            db,
            "rollout",
            "create",
            PATCH,
            "--waves",
            "1,2,100%",
            "--by",
            "zone",
            "--max-failed",
            "2",
            "--retry-refused",
            "1",
            "--retry-delay",
            "1s",
            "--transition-timeout",
            "2s",
            "-o",
            "json",
            env=env,
        ).stdout
    )["data"]["id"]
    driver = subprocess.Popen(
        [str(BIN / "klpfleet"), "--db", db, "rollout", "start", str(rid), "--wait"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(kill_after)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    for _ in range(10):
        status = json.loads(klp(db, "rollout", "status", str(rid), "-o", "json", env=env, check=False).stdout)
        if status["data"]["status"] == "completed":
            break
        time.sleep(float(env["KLPFLEET_LEASE_SECONDS"]) + 0.2)
        klp(db, "rollout", "resume", str(rid), "--wait", env=env, check=False)
    problems = []
    data = json.loads(klp(db, "rollout", "status", str(rid), "-o", "json", env=env, check=False).stdout)["data"]
    if data["status"] != "completed":
        problems.append(f"rollout ended {data['status']}")
    probe = json.loads(klp(db, "probe", "-o", "json", env=env, check=False).stdout)["data"]
    for h in probe["hosts"]:
        if h["drift"]:
            problems.append(f"{h['host']}: drift {h['drift']}")
    done = {h["host"]: h["outcome"] for w in data["waves"] for h in w["hosts"]}
    for name, outcome in done.items():
        state = json.loads((tmp / "fleet" / "hosts" / name / "kernel.json").read_text())
        enables = sum(1 for _, _, text in state["log"] if text == f"livepatch: enabling patch '{PATCH}'")
        if outcome == "applied" and enables != 1:
            problems.append(f"{name}: applied with {enables} enable attempts")
    events = json.loads(klp(db, "events", "--rollout", str(rid), "--limit", "1000", "-o", "json", env=env).stdout)
    kinds = [e["kind"] for e in events["data"]]
    if kinds.count("wave.completed") != len(data["waves"]) or kinds.count("rollout.completed") != 1:
        problems.append(f"events: {kinds.count('wave.completed')} wave.completed for {len(data['waves'])} waves")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hosts", type=int, default=8)
    args = parser.parse_args()
    rnd = random.Random(args.seed)
    failures = 0
    start = time.perf_counter()
    for n in range(1, args.trials + 1):
        kill_after = round(rnd.uniform(0.2, 14.0), 2)
        with tempfile.TemporaryDirectory(prefix="klpfleet-chaos-") as t:
            tmp = Path(t)
            env = {
                **os.environ,
                "KLPFLEET_LEASE_SECONDS": "2",
                "KLPFLEET_RUN_DIR": str(tmp / "runs"),
                "KLPFLEET_ARTIFACTS": str(tmp / "art"),
                "PATH": f"{BIN}:{os.environ['PATH']}",
            }
            env.pop("KLPFLEET_DB", None)
            problems = trial(tmp, args.hosts, kill_after, env)
        failures += bool(problems)
        print(
            f"trial {n:2d}: killed after {kill_after:5.2f}s -> {'OK' if not problems else '; '.join(problems)}",
            flush=True,
        )
    print(f"{args.trials} trials, {failures} with mismatches, {time.perf_counter() - start:.0f} s")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
