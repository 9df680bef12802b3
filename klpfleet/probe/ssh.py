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


# Output kept per stream and host: the probe's answer is a few KB to a few hundred KB of JSON.
MAX_OUTPUT = 8 * 1024 * 1024


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
    truncated: bool = False  # output past max_output was dropped (only the tail was kept)


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
    target: Target,
    argv: list[str],
    stdin: str,
    known: KnownHosts,
    connect_timeout: float,
    command_timeout: float,
    max_output: int = MAX_OUTPUT,
) -> RunResult:
    """Run `argv` (a constant of the caller's, never host data) on one host with `stdin`; classify whatever
    goes wrong. Over SSH the remote shell receives it quoted by shlex."""
    result = RunResult(target.name, OK)
    start = time.monotonic()
    try:
        if target.local:
            _run_local(argv, stdin, command_timeout, result, max_output)
        else:
            _run_ssh(target, shlex.join(argv), stdin, known, connect_timeout, command_timeout, result, max_output)
    finally:
        result.seconds = round(time.monotonic() - start, 3)
    return result


def _run_local(argv: list[str], stdin: str, timeout: float, result: RunResult, max_output: int) -> None:
    import selectors

    try:
        proc = subprocess.Popen(  # noqa: S603 - argv of the caller (constant or operator health check), no shell
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        result.status, result.error = BROKEN_REMOTE, str(exc)
        return
    assert proc.stdin and proc.stdout and proc.stderr
    deadline = time.monotonic() + timeout
    out, err = Tail(max_output), Tail(max_output)
    pending = memoryview(stdin.encode())
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        if pending:
            sel.register(proc.stdin, selectors.EVENT_WRITE, None)
        else:
            proc.stdin.close()
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                proc.wait()
                result.status, result.error = TIMEOUT, f"no answer within {timeout:g}s"
                return
            for key, _ in sel.select(min(remaining, 0.5)):
                if key.data is None:  # stdin: feed what the pipe takes, close when done
                    try:
                        pending = pending[os.write(key.fd, pending[:65536]) :]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(key.fileobj)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.add(chunk)
                else:
                    sel.unregister(key.fileobj)
    result.exit_code = proc.wait()
    _keep(result, out, err)


def _run_ssh(
    target: Target,
    command: str,
    stdin: str,
    known: KnownHosts,
    connect_timeout: float,
    command_timeout: float,
    result: RunResult,
    max_output: int,
) -> None:
    client = None
    try:
        client = connect(target, known, connect_timeout, result)
        run_on_transport(client.get_transport(), command, stdin, command_timeout, result, max_output)
    except CommandTimeout:
        result.status, result.error = TIMEOUT, f"no answer within {command_timeout:g}s"
    except Exception as exc:
        if not classify_connect_error(exc, result, connect_timeout):
            raise
    finally:
        if client is not None:
            client.close()


def connect(target: Target, known: KnownHosts, connect_timeout: float, result: RunResult) -> Any:
    """An open paramiko client to the target, its host key checked against known_hosts (an unknown key is
    refused unless `known` accepts new keys). Errors are paramiko's or OSError: see classify_connect_error."""
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
    except BaseException:
        conn.close()
        raise
    return conn.client


def classify_connect_error(exc: BaseException, result: RunResult, connect_timeout: float) -> bool:
    """Name what went wrong reaching a host (status and one-line error on `result`); False: not an SSH error."""
    import paramiko

    if isinstance(exc, paramiko.BadHostKeyException):
        result.status, result.error = HOST_KEY_CHANGED, f"host key changed: {exc}"
    elif isinstance(exc, paramiko.AuthenticationException):
        result.status, result.error = AUTH_FAILED, f"authentication refused: {exc}"
    elif isinstance(exc, TimeoutError):
        result.status, result.error = UNREACHABLE, f"connect timed out after {connect_timeout:g}s"
    elif isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if "not in" in text and "host key" in text:
            result.status, result.error = HOST_KEY_UNKNOWN, text
        else:
            result.status, result.error = UNREACHABLE, f"ssh: {text}"
    elif isinstance(exc, OSError):
        result.status, result.error = UNREACHABLE, exc.strerror or str(exc)
    else:
        return False
    return True


class CommandTimeout(Exception):
    pass


EOF_GRACE = 5.0  # seconds to wait for the end of the output once the command's exit status came


class Tail:
    """What a command printed, bounded: the last `limit` bytes are kept, the rest is counted and dropped
    (a health check that prints 150 MB must not take the controller's memory with it)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.data, self.dropped = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            excess = len(self.data) - self.limit
            del self.data[:excess]
            self.dropped += excess

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def _keep(result: RunResult, out: Tail, err: Tail) -> None:
    result.stdout, result.stderr = out.text(), err.text()
    result.truncated = bool(out.dropped or err.dropped)


def run_on_transport(
    transport: Any, command: str, stdin: str, timeout: float, result: RunResult, max_output: int
) -> None:
    """Run one command on an open transport: send stdin and close it (so `python3 -` sees EOF), collect
    stdout/stderr and the exit status, give up at the deadline. Fabric's runner never closes stdin."""
    import select

    deadline = time.monotonic() + timeout
    chan = transport.open_session(timeout=timeout)
    try:
        chan.exec_command(command)
        chan.sendall(stdin.encode())
        chan.shutdown_write()
        out, err = Tail(max_output), Tail(max_output)
        exited_at = None
        while True:
            if chan.recv_ready():
                out.add(chan.recv(65536))
            elif chan.recv_stderr_ready():
                err.add(chan.recv_stderr(65536))
            elif chan.exit_status_ready() and (chan.eof_received or chan.closed):
                break
            elif time.monotonic() > deadline:
                raise CommandTimeout
            elif exited_at is not None and time.monotonic() - exited_at > EOF_GRACE:
                break  # a server that never sends EOF: what arrived is all there is
            else:
                # sshd may send the exit status before the last of the output: read on until EOF.
                if exited_at is None and chan.exit_status_ready():
                    exited_at = time.monotonic()
                select.select([chan], [], [], 0.05)
        result.exit_code = chan.recv_exit_status()
        _keep(result, out, err)
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
    max_output: int = MAX_OUTPUT,
) -> list[RunResult]:
    """A pool of `forks` threads (never one per host); results in the targets' order."""
    known = KnownHosts(known_hosts, accept_new)
    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(targets) or 1))) as pool:
        futures = [
            pool.submit(run_remote, t, argv, stdin_for(t), known, connect_timeout, command_timeout, max_output)
            for t in targets
        ]
        return [f.result() for f in futures]
