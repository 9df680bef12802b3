"""Real sshd instances on loopback ports, started by the tests, with keys generated for the test."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


class Sshd:
    def __init__(self, root: Path, client_key: Path) -> None:
        if not os.path.exists(SSHD):
            pytest.skip("sshd not installed (apt-get install openssh-server)")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.host_key = keygen(root / "host_key")
        (root / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
        os.chmod(root / "authorized_keys", 0o600)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        config = root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "PermitRootLogin prohibit-password\nMaxStartups 200:30:400\nMaxSessions 200\nLogLevel ERROR\n"
        )
        with open(root / "sshd.log", "w") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd did not start: {(root / 'sshd.log').read_text()}")

    def known_hosts_line(self) -> str:
        kind, key = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ssh_client_key(tmp_path_factory):
    return keygen(tmp_path_factory.mktemp("client") / "id_ed25519")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory, ssh_client_key):
    server = Sshd(tmp_path_factory.mktemp("sshd"), ssh_client_key)
    yield server
    server.stop()


def ssh_user() -> str:
    return getpass.getuser()
