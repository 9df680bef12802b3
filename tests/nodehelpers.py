"""Execution nodes on this machine: one Unix user per node, each with its own virtualenv (ansible-core and
ansible-runner, nothing of klpfleet), all reached through a real sshd on a loopback port with generated keys.
The simulated hosts a node serves belong to its user, so a node can touch only its own share."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.sshhelpers import Sshd, keygen

NODES = ("klpnode1", "klpnode2", "klpnode3")
OLD_RUNNER_NODE = "klpnode4"  # ansible-runner 1.4.7: no streaming worker
CURRENT = (f"ansible-core=={version('ansible-core')}", f"ansible-runner=={version('ansible-runner')}")
OLD = ("ansible-runner==1.4.7",)


def _user(name: str) -> Path:
    try:
        home = Path(pwd.getpwnam(name).pw_dir)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
        home = Path(pwd.getpwnam(name).pw_dir)
    # A locked account ('!') is refused by sshd even with a key; '*' only means "no password".
    subprocess.run(["usermod", "-p", "*", name], check=True)
    return home


def _venv(user: str, home: Path, packages: tuple[str, ...]) -> Path:
    venv = home / "venv"
    stamp = venv / "klpfleet-test-packages"
    # The system Python: a node user cannot run an interpreter under root's home (pyenv).
    system = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    wanted = " ".join((system, *packages))
    if not (stamp.exists() and stamp.read_text() == wanted):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([system, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True, capture_output=True)
        stamp.write_text(wanted)
    subprocess.run(["chown", "-R", f"{user}:{user}", str(home)], check=True)
    return venv / "bin" / "ansible-runner"


class NodeLab:
    """The users, their runners and the sshd in front of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = keygen(root / "controller_key")
        self.runners: dict[str, Path] = {}
        self.homes: dict[str, Path] = {}
        for user in (*NODES, OLD_RUNNER_NODE):
            self.homes[user] = _user(user)
            self.runners[user] = _venv(user, self.homes[user], OLD if user == OLD_RUNNER_NODE else CURRENT)
        self.sshd = Sshd(root / "sshd", self.key)
        # sshd reads authorized_keys as the user logging in
        for path in (root, root / "sshd"):
            path.chmod(0o755)
        (root / "sshd" / "authorized_keys").chmod(0o644)
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(self.sshd.known_hosts_line())

    def add_args(self, user: str, *, runner: str | Path | None = None, port: int | None = None) -> list[str]:
        return [
            "--ssh",
            f"{user}@127.0.0.1:{port or self.sshd.port}",
            "--key",
            str(self.key),
            "--known-hosts",
            str(self.known_hosts),
            "--runner",
            str(runner or self.runners[user]),
        ]

    def wrapper(self, user: str, name: str, pipe: str) -> Path:
        """A runner that passes the worker's stream through `pipe` (a shell filter): a node returning a
        truncated or corrupt stream. worker-info and everything else go to the real runner."""
        directory = self.homes[user] / name
        directory.mkdir(exist_ok=True)
        script = directory / "ansible-runner"
        real = self.runners[user].parent
        script.write_text(
            "#!/bin/sh\n"
            f'PATH="{real}:$PATH"; export PATH\n'
            'if [ "$1" = worker ] && [ "$2" != --worker-info ]; then\n'
            f'  ansible-runner "$@" | {pipe}\n'
            "else\n"
            '  exec ansible-runner "$@"\n'
            "fi\n"
        )
        script.chmod(0o755)
        playbook = directory / "ansible-playbook"
        if not playbook.is_symlink():
            playbook.symlink_to(real / "ansible-playbook")
        subprocess.run(["chown", "-R", f"{user}:{user}", str(directory)], check=True)
        return script

    def hostile(self, user: str, name: str, mode: str, outside: Path) -> Path:
        """A compromised node: its runner answers worker-info truthfully, reads the job, then answers with a crafted
        stream (`mode`): `forge` (results for hosts of another zone and for a ghost, then an artifacts archive
        whose entries escape through a symlink and `../`), `overlong` (one endless line) or `endless`
        (keepalives forever). `outside` is where the escaping entries point."""
        directory = self.homes[user] / name
        directory.mkdir(exist_ok=True)
        script = directory / "ansible-runner"
        script.write_text(HOSTILE_RUNNER.format(real=str(self.runners[user]), mode=mode, outside=str(outside)))
        script.chmod(0o755)
        playbook = directory / "ansible-playbook"
        if not playbook.is_symlink():
            playbook.symlink_to(self.runners[user].parent / "ansible-playbook")
        subprocess.run(["chown", "-R", f"{user}:{user}", str(directory)], check=True)
        return script

    def stop(self) -> None:
        self.sshd.stop()
        for user in (*NODES, OLD_RUNNER_NODE):
            subprocess.run(["pkill", "-KILL", "-u", user], check=False)


@pytest.fixture(scope="session")
def node_lab():
    if os.geteuid() != 0:
        pytest.skip("execution node tests create Unix users: run as root")
    root = Path(tempfile.mkdtemp(prefix="klpfleet-nodes-", dir="/var/tmp"))
    lab = NodeLab(root)
    yield lab
    lab.stop()
    shutil.rmtree(root, ignore_errors=True)


def shared_dir() -> Path:
    """A directory node users can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="klpfleet-fleet-", dir="/var/tmp"))
    path.chmod(0o755)
    return path


def give_hosts(fleet: Path, owner_of: dict[str, str]) -> None:
    """Each simulated host to the node user that serves it."""
    for host, user in owner_of.items():
        subprocess.run(["chown", "-R", f"{user}:{user}", str(fleet / "hosts" / host)], check=True)


HOSTILE_RUNNER = """#!/usr/bin/python3
import base64, io, json, os, sys, time, zipfile
REAL, MODE, OUTSIDE = {real!r}, {mode!r}, {outside!r}
args = sys.argv[1:]
if args[:1] != ["worker"] or "--worker-info" in args:
    os.execv(REAL, [REAL] + args)
sys.stdin.buffer.read()  # the job, whole
out = sys.stdout.buffer

def say(obj):
    out.write(json.dumps(obj).encode() + b"\\n")
    out.flush()

say({{"status": "starting"}})
say({{"status": "running"}})
if MODE == "overlong":
    chunk = b"x" * 65536
    for _ in range(200):  # 13 MB without a newline
        out.write(chunk)
    out.flush()
    time.sleep(30)
elif MODE == "endless":
    while True:
        say({{"event": "keepalive"}})
        time.sleep(0.2)
else:
    for host in ("sim-03", "sim-01", "ghost-99"):
        say({{"event": "runner_on_ok", "uuid": host, "counter": 1, "event_data": {{
            "host": host, "resolved_action": "klpfleet.livepatch.patch", "task_args": {{}},
            "res": {{"outcome": "applied", "name": "livepatch_cve_2026_1234", "changed": True,
                     "patch": {{"enabled": True, "transition": False}}}}}}}})
    say({{"status": "successful"}})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("escape")
        link.create_system = 3
        link.external_attr = (0o777 | 0xA000) << 16
        archive.writestr(link, OUTSIDE)
        archive.writestr("escape/pwned-through-symlink", b"owned")
        archive.writestr("../../../pwned-dotdot", b"owned")
    data = buffer.getvalue()
    say({{"zipfile": len(data)}})
    out.write(base64.b64encode(data))  # as ansible-runner's worker sends it
    say({{"eof": True}})
"""
