"""Benchmark: `klpfleet probe` against `ansible -m klpfleet.livepatch.patch_info` over the same SSH hosts.

50 simulated hosts, each reached over real SSH (an sshd started here on a loopback port), forks 20 for
both, both cold (no SSH connection reuse). Ansible runs with pipelining. Target (issue 6): probe at
least 5x faster.

    python benchmarks/probe_bench.py [--hosts 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(tmp: Path, client_pub: str) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "host_key")], check=True)
    (tmp / "authorized_keys").write_text(client_pub)
    os.makedirs("/run/sshd", exist_ok=True)
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        f"PidFile {tmp / 'sshd.pid'}\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin prohibit-password\nMaxStartups 500:30:1000\nLogLevel ERROR\n"
    )
    proc = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(tmp / "sshd_config")])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    kind, key = (tmp / "host_key.pub").read_text().split()[:2]
    return proc, port, f"[127.0.0.1]:{port} {kind} {key}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klpfleet-probe-bench-") as t:
        tmp = Path(t)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "client")], check=True)
        sshd, port, known = start_sshd(tmp, (tmp / "client.pub").read_text())
        (tmp / "known_hosts").write_text(known)
        env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "KLPFLEET_DB": str(tmp / "k.db"),
            "KLPFLEET_KNOWN_HOSTS": str(tmp / "known_hosts"),
        }
        try:
            from klpfleet.sim.fleet import create_host

            hosts = {}
            for i in range(1, args.hosts + 1):
                name = f"ssh-{i:02d}"
                create_host(tmp / "hosts" / name, speed=0.0)
                hosts[name] = {
                    "ansible_host": "127.0.0.1",
                    "ansible_port": port,
                    "ansible_user": getpass.getuser(),
                    "ansible_ssh_private_key_file": str(tmp / "client"),
                    "klp_backend": "sim",
                    "klp_sim_root": str(tmp / "hosts" / name),
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "ansible_ssh_common_args": f"-o UserKnownHostsFile={tmp / 'known_hosts'} "
                    "-o StrictHostKeyChecking=yes -o ControlMaster=no",
                }
            (tmp / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
            subprocess.run([str(BIN / "klpfleet"), "db", "upgrade"], env=env, check=True, capture_output=True)
            subprocess.run(
                [str(BIN / "klpfleet"), "inventory", "import", "-i", str(tmp / "inventory.yml")],
                env=env,
                check=True,
                capture_output=True,
            )

            def ansible() -> None:
                proc = subprocess.run(
                    [
                        str(BIN / "ansible"),
                        "all",
                        "-i",
                        str(tmp / "inventory.yml"),
                        "-f",
                        "20",
                        "-m",
                        "klpfleet.livepatch.patch_info",
                        "-o",
                    ],
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                ok = proc.stdout.count("SUCCESS")
                assert ok == args.hosts, proc.stdout[-2000:] + proc.stderr[-2000:]

            def probe() -> None:
                proc = subprocess.run(
                    [str(BIN / "klpfleet"), "probe", "--forks", "20", "-o", "json"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                data = json.loads(proc.stdout)["data"]["summary"]
                assert data["reachable"] == args.hosts, proc.stderr

            def ssh_floor() -> None:
                """The same pool and SSH sessions running `true`: what connecting alone costs here. No
                SSH-based tool can be faster than this on this machine."""
                code = (
                    "import sys, getpass; from pathlib import Path; from klpfleet.probe.ssh import Target, run_all\n"
                    f"t = [Target(str(i), '127.0.0.1', {port}, getpass.getuser(), {str(tmp / 'client')!r}) "
                    f"for i in range({args.hosts})]\n"
                    f"r = run_all(t, ['true'], lambda _t: '', forks=20, known_hosts=Path({str(tmp / 'known_hosts')!r}),"
                    " accept_new=False, connect_timeout=10, command_timeout=60)\n"
                    "sys.exit(0 if all(x.status == 'ok' and x.exit_code == 0 for x in r) else 1)\n"
                )
                subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)

            def timed(fn) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
                """Wall times, and the CPU of the controller side: the command and every process it waited
                for (Ansible's workers and ssh clients), not the sshd sessions or Python on the "hosts"."""
                times, cpu = [], []
                for _ in range(args.runs):
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                return times, cpu

            (a, a_cpu), (p, p_cpu), (f, _) = timed(ansible), timed(probe), timed(ssh_floor)
            ratio = statistics.median(a) / statistics.median(p)
            floor = statistics.median(f)
            cpu_ratio = statistics.median(a_cpu) / statistics.median(p_cpu)
            print(f"{args.hosts} SSH hosts (one loopback sshd), forks 20, {args.runs} runs each, medians:")
            print(
                f"ansible -m klpfleet.livepatch.patch_info (pipelining): {statistics.median(a):6.2f} s  "
                f"(runs: {', '.join(f'{x:.2f}' for x in a)})"
            )
            print(
                f"klpfleet probe (Fabric, bounded pool):                 {statistics.median(p):6.2f} s  "
                f"(runs: {', '.join(f'{x:.2f}' for x in p)})"
            )
            print(
                f"SSH floor (same pool, `true` on each host):            {floor:6.2f} s  "
                f"(runs: {', '.join(f'{x:.2f}' for x in f)})"
            )
            print(f"probe is {ratio:.1f}x faster (wall)   target >= 5x   {'met' if ratio >= 5 else 'MISSED'}")
            print(
                f"best ratio any SSH tool could reach here: {statistics.median(a) / floor:.1f}x; time above the "
                f"floor: ansible {statistics.median(a) - floor:.2f} s, probe {statistics.median(p) - floor:.2f} s "
                f"-> {(statistics.median(a) - floor) / max(0.01, statistics.median(p) - floor):.1f}x less"
            )
            print(
                f"controller CPU: ansible {statistics.median(a_cpu):.2f} s, probe {statistics.median(p_cpu):.2f} s "
                f"-> {cpu_ratio:.1f}x less"
            )
            print("note: here the 'hosts' (an sshd session and a Python per host) share the controller's 2 cores;")
            print("      on a real fleet that work runs on the hosts, and the controller CPU is what scales.")
        finally:
            sshd.terminate()


if __name__ == "__main__":
    main()
