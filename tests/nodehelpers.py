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
