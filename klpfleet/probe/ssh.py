"""Running one constant command on many hosts, read-only, over Fabric: a bounded pool, a connect and a
command timeout on every host, host keys verified against known_hosts.

Fabric accepts unknown host keys silently by default; here an unknown key is refused unless the caller
opted in to accepting new keys, and then every accepted key is reported. Unreachable, refused
authentication, an unknown or changed host key, a timeout and a broken remote are distinct results,
and none of them stops the other hosts.
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK, UNREACHABLE, AUTH_FAILED, HOST_KEY_UNKNOWN, HOST_KEY_CHANGED, TIMEOUT, BROKEN_REMOTE = (
    "ok",
    "unreachable",
    "auth_failed",
    "host_key_unknown",
    "host_key_changed",
    "timeout",
    "broken_remote",
)


@dataclass
class Target:
    name: str
    address: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    local: bool = False  # ansible_connection: local (a simulated host on this machine)
    vars: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Target:
        hv = record["vars"]
        return cls(
            name=record["name"],
            address=record["address"] or record["name"],
            port=int(record["port"] or 22),
            user=record["user"],
            key_file=record["key_file"],
            local=hv.get("ansible_connection") == "local",
            vars=hv,
        )


@dataclass
class RunResult:
    host: str
    status: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    error: str | None = None
    seconds: float = 0.0
    accepted_key: str | None = None


class KnownHosts:
    """known_hosts shared by the pool: loaded once, appended to (under a lock) only on explicit opt-in."""

    def __init__(self, path: Path, accept_new: bool) -> None:
        self.path = path
        self.accept_new = accept_new
        self.lock = threading.Lock()

    def policy(self, result: RunResult) -> Any:
        import paramiko

        known = self

        class Policy(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
                if not known.accept_new:
                    raise paramiko.SSHException(f"host key for {hostname} is not in {known.path}")
                with known.lock:
                    known.path.parent.mkdir(parents=True, exist_ok=True)
                    with open(known.path, "a") as f:
                        f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
                client.get_host_keys().add(hostname, key.get_name(), key)
                result.accepted_key = f"{key.get_name()} SHA256:{_fingerprint(key)}"

        return Policy()


def _fingerprint(key: Any) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def run_remote(
    target: Target, argv: list[str], stdin: str, known: KnownHosts, connect_timeout: float, command_timeout: float
) -> RunResult:
    """Run `argv` (a constant of the caller's, never host data) on one host with `stdin`; classify whatever
    goes wrong. Over SSH the remote shell receives it quoted by shlex."""
    result = RunResult(target.name, OK)
    start = time.monotonic()
    try:
        if target.local:
            _run_local(argv, stdin, command_timeout, result)
        else:
            _run_ssh(target, shlex.join(argv), stdin, known, connect_timeout, command_timeout, result)
    finally:
        result.seconds = round(time.monotonic() - start, 3)
    return result


def _run_local(argv: list[str], stdin: str, timeout: float, result: RunResult) -> None:
    try:
        proc = subprocess.run(  # noqa: S603 - argv of the caller (constant or operator health check), no shell
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        result.status, result.error = TIMEOUT, f"no answer within {timeout:g}s"
        return
    except OSError as exc:
        result.status, result.error = BROKEN_REMOTE, str(exc)
        return
    result.stdout, result.stderr, result.exit_code = proc.stdout, proc.stderr, proc.returncode


def _run_ssh(
    target: Target,
    command: str,
    stdin: str,
    known: KnownHosts,
    connect_timeout: float,
    command_timeout: float,
    result: RunResult,
) -> None:

    import paramiko
    from fabric import Connection

    connect_kwargs: dict[str, Any] = {"banner_timeout": connect_timeout, "auth_timeout": connect_timeout}
    if target.key_file:
        connect_kwargs.update(key_filename=os.path.expanduser(target.key_file), look_for_keys=False, allow_agent=False)
    conn = Connection(
        host=target.address,
        port=target.port,
        user=target.user or getpass.getuser(),
        connect_timeout=connect_timeout,
        connect_kwargs=connect_kwargs,
    )
    # Fabric trusts unknown keys by default: load known_hosts and reject what is not in it.
    conn.client = paramiko.SSHClient()
    if known.path.exists():
        conn.client.load_host_keys(str(known.path))
    conn.client.set_missing_host_key_policy(known.policy(result))
    try:
        conn.open()
        _exec(conn.client.get_transport(), command, stdin, command_timeout, result)
    except paramiko.BadHostKeyException as exc:
        result.status, result.error = HOST_KEY_CHANGED, f"host key changed: {exc}"
    except paramiko.AuthenticationException as exc:
        result.status, result.error = AUTH_FAILED, f"authentication refused: {exc}"
    except CommandTimeout:
        result.status, result.error = TIMEOUT, f"no answer within {command_timeout:g}s"
    except TimeoutError:
        result.status, result.error = UNREACHABLE, f"connect timed out after {connect_timeout:g}s"
    except paramiko.SSHException as exc:
        text = str(exc)
        if "not in" in text and "host key" in text:
            result.status, result.error = HOST_KEY_UNKNOWN, text
        else:
            result.status, result.error = UNREACHABLE, f"ssh: {text}"
    except OSError as exc:
        result.status, result.error = UNREACHABLE, exc.strerror or str(exc)
    finally:
        conn.close()


class CommandTimeout(Exception):
    pass


def _exec(transport: Any, command: str, stdin: str, timeout: float, result: RunResult) -> None:
    """Run one command on an open transport: send stdin and close it (so `python3 -` sees EOF), collect
    stdout/stderr and the exit status, give up at the deadline. Fabric's runner never closes stdin."""
    import select

    deadline = time.monotonic() + timeout
    chan = transport.open_session(timeout=timeout)
    try:
        chan.exec_command(command)
        chan.sendall(stdin.encode())
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        while True:
            if chan.recv_ready():
                out += chan.recv(65536)
            elif chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            elif chan.exit_status_ready():
                break
            elif time.monotonic() > deadline:
                raise CommandTimeout
            else:
                select.select([chan], [], [], 0.05)
        result.exit_code = chan.recv_exit_status()
        result.stdout, result.stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    finally:
        chan.close()


def run_all(
    targets: list[Target],
    argv: list[str],
    stdin_for: Callable[[Target], str],
    *,
    forks: int,
    known_hosts: Path,
    accept_new: bool,
    connect_timeout: float,
    command_timeout: float,
) -> list[RunResult]:
    """A pool of `forks` threads (never one per host); results in the targets' order."""
    known = KnownHosts(known_hosts, accept_new)
    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(targets) or 1))) as pool:
        futures = [
            pool.submit(run_remote, t, argv, stdin_for(t), known, connect_timeout, command_timeout) for t in targets
        ]
        return [f.result() for f in futures]
