"""One job on one execution node: ansible-runner's transmit into an SSH channel to `ansible-runner worker` on
the node, and ansible-runner's process on what comes back, each event handed to the caller as it arrives.

Whatever goes wrong is named, because the gate and the operator treat the cases differently:

- node_unreachable   the node could not be reached or its worker-info failed: no job was sent, nothing ran;
- node_incompatible  it answered, but with an ansible-runner klpfleet does not stream to: nothing ran;
- node_lost          the stream ended before the worker's end mark (worker killed, node down, SSH cut);
- node_silent        no byte, not even a keepalive, for the node's `silent_after_seconds`: the channel is closed;
- node_stream_corrupt a line that is not ansible-runner's JSON, or an artifacts archive that does not unpack;
- node_deadline      the job ran past its deadline (a node that keeps talking without finishing): cut off;
- node_forged_result the node sent results for hosts it was not given: none recorded, all its hosts in flight;
- node_error         the worker itself reported an error (it could not unpack the job, no ansible-playbook).

What comes back is untrusted: a node may be compromised. The stream is read here, not by ansible-runner's
Processor: lines are bounded (MAX_LINE), the artifacts archive a worker appends is read past and never unpacked
(ansible-runner's unpacking follows symlinks out of the run folder), and the job has a deadline. Only events go
on, and the caller records only those of the node's own hosts (klpfleet.nodes.dispatch).

After node_lost, node_silent and node_stream_corrupt, hosts without a result are in flight: the job may have
touched them, and only reading them (patch_info) can tell.
"""

from __future__ import annotations

import io
import json
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klpfleet.nodes.registry import Node
from klpfleet.nodes.remote import CONNECT_TIMEOUT, known_hosts_of, runner_argv, target, worker_info
from klpfleet.probe.ssh import KnownHosts, RunResult, classify_connect_error, connect

NODE_FAILURES = (
    "node_unreachable",
    "node_incompatible",
    "node_lost",
    "node_silent",
    "node_stream_corrupt",
    "node_deadline",
    "node_forged_result",
    "node_error",
    "no_node",
)
MAX_LINE = 8 * 2**20  # one event of the worker's stream; module results are far smaller (and capped on receipt)
MAX_ARTIFACTS = 1 << 30  # the artifacts archive the worker announces: read past, never unpacked
CHUNK = 1 << 16


@dataclass
class Job:
    """What the controller streams: a private data dir (project, inventory) and ansible-runner's kwargs."""

    private_data_dir: Path
    playbook: str  # relative to project/
    forks: int
    ident: str
    envvars: dict[str, str] = field(default_factory=dict)
    deadline_seconds: float = 3600.0  # the whole job, however much the node keeps talking


@dataclass
class NodeRun:
    node: str
    status: str = "unstarted"  # ansible-runner's status as the worker reported it, or error / canceled
    failure: str | None = None  # one of NODE_FAILURES
    detail: str | None = None
    ran: bool = False  # the job reached the worker: hosts without a result may have been touched
    events: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("node", "status", "failure", "detail", "ran", "events", "seconds")}


class _Stop(Exception):
    """The stream cannot be read further (silent, past the deadline, overlong or corrupt): the flags say why."""


class _WorkerStream:
    """The worker's output read from the channel in bounded lines, remembering how it ended. Hand-written
    rather than ansible-runner's Processor, which reads unbounded lines and unpacks whatever archive the node
    sends; the protocol (JSON lines: status, events, keepalives, `{"zipfile": N}` + N bytes in base64,
    `{"eof": true}`) is small."""

    def __init__(self, channel: Any, limit: float) -> None:
        self.channel = channel
        self.limit = limit
        self.deadline = time.monotonic() + limit
        self.buffer = bytearray()
        self.bytes = 0
        self.silent = self.late = self.ended = self.cut = False
        self.corrupt: str | None = None

    def _fill(self) -> bool:
        if time.monotonic() > self.deadline:
            self.late = True
            raise _Stop
        try:
            chunk = self.channel.recv(CHUNK)
        except TimeoutError:
            self.silent = True
            raise _Stop from None
        self.bytes += len(chunk)
        self.buffer += chunk
        return bool(chunk)

    def readline(self) -> bytes:
        """One line with its newline; a line without one is what the stream ended with; b"" at its end."""
        searched = 0
        while True:
            at = self.buffer.find(b"\n", searched)
            if at >= 0:
                line = bytes(self.buffer[: at + 1])
                del self.buffer[: at + 1]
                return line
            if len(self.buffer) > MAX_LINE:
                self.corrupt = f"a line longer than {MAX_LINE} bytes"
                raise _Stop
            searched = len(self.buffer)
            if not self._fill():
                line = bytes(self.buffer)
                self.buffer.clear()
                return line

    def skip(self, count: int) -> None:
        while len(self.buffer) < count:
            count -= len(self.buffer)
            self.buffer.clear()
            if not self._fill():
                return
        del self.buffer[:count]

    def process(self, on_event: Callable[[dict[str, Any]], None], said: dict[str, Any]) -> None:
        """Read to the worker's end mark (or whatever ends the stream first), each event to `on_event`."""
        while True:
            line = self.readline()
            if not line:
                return
            if not line.endswith(b"\n"):
                self.cut = True  # the stream stopped mid-line: truncated, not corrupt
                return
            try:
                data = json.loads(line)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                self.corrupt = f"a line that is not ansible-runner's JSON: {line[:120]!r}"
                return
            if "status" in data:
                said["status"] = str(data["status"])[:40]
                if isinstance(data.get("job_explanation"), str):
                    said["job_explanation"] = data["job_explanation"][:1000]
            elif "zipfile" in data:
                size = data["zipfile"]
                if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_ARTIFACTS:
                    self.corrupt = f"an artifacts archive of {str(size)[:40]} bytes"
                    return
                # The archive travels base64-encoded (4 characters per 3 bytes, padded): read past, never unpacked.
                self.skip(4 * ((size + 2) // 3))
            elif "eof" in data:
                self.ended = True
                return
            elif data.get("event") != "keepalive":
                on_event(data)


def run_job(
    node: Node,
    job: Job,
    on_event: Callable[[dict[str, Any]], None],
    cancel: Callable[[], bool] | None = None,
) -> NodeRun:
    """Stream `job` to `node`, feed each returned event to `on_event`; never raises for a node's failure."""
    start = time.monotonic()
    run = NodeRun(node.name)
    try:
        _run(node, job, on_event, cancel, run)
    finally:
        run.seconds = round(time.monotonic() - start, 3)
    return run


def _run(
    node: Node,
    job: Job,
    on_event: Callable[[dict[str, Any]], None],
    cancel: Callable[[], bool] | None,
    run: NodeRun,
) -> None:
    reached = RunResult(node.name, "ok")
    try:
        client = connect(target(node), KnownHosts(known_hosts_of(node), False), CONNECT_TIMEOUT, reached)
    except Exception as exc:
        if not classify_connect_error(exc, reached, CONNECT_TIMEOUT):
            raise
        run.status, run.failure, run.detail = "error", "node_unreachable", f"{reached.status}: {reached.error}"
        return
    stopped = threading.Event()
    try:
        found = worker_info(node, client=client)  # one connection: the check, then the job's channel
        if found.code is not None:
            run.status, run.failure, run.detail = "error", found.code, "; ".join(found.problems)
            return
        channel = client.get_transport().open_session(timeout=CONNECT_TIMEOUT)
        channel.settimeout(node.silent_after_seconds)
        worker = runner_argv(node, "worker", "--keepalive-seconds", str(node.keepalive_seconds))
        channel.exec_command(shlex.join(worker))
        run.ran = True  # from here on the worker may have started the job
        said: dict[str, Any] = {}
        sender = threading.Thread(target=_transmit, args=(job, channel, said), daemon=True)
        sender.start()
        if cancel is not None:
            threading.Thread(target=_watch, args=(cancel, channel, stopped, run), daemon=True).start()
        stream = _WorkerStream(channel, job.deadline_seconds)

        def handle(event: dict[str, Any]) -> None:
            run.events += 1
            on_event(event)

        try:
            stream.process(handle, said)
        except _Stop:
            pass
        except OSError as exc:  # the channel failed under us: the stream ended there
            said.setdefault("read_error", f"{type(exc).__name__}: {exc}")
        run.status = said.get("status", "unstarted")
        _judge(run, stream, said)
    finally:
        stopped.set()
        client.close()


class _Sink(io.RawIOBase):
    """The channel's input as ansible-runner's Transmitter writes it (a named file object)."""

    name = "<execution node>"

    def __init__(self, channel: Any) -> None:
        super().__init__()
        self.file = channel.makefile_stdin("wb")

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.file.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        self.file.flush()


def _transmit(job: Job, channel: Any, said: dict[str, Any]) -> None:
    import ansible_runner

    out = _Sink(channel)
    try:
        ansible_runner.run(
            streamer="transmit",
            _output=out,
            private_data_dir=str(job.private_data_dir),
            playbook=job.playbook,
            inventory=str(job.private_data_dir / "inventory" / "hosts.yml"),  # sent relative to the dir
            envvars=job.envvars,
            forks=job.forks,
            ident=job.ident,
            settings={"suppress_ansible_output": True},
            quiet=True,
        )
        channel.shutdown_write()
    except OSError:
        pass  # the channel closed under us: the reading side names what happened
    except Exception as exc:  # the job never reached the worker whole: it cannot have run
        said["unsent"] = f"{type(exc).__name__}: {exc}"
        channel.close()


def _watch(cancel: Callable[[], bool], channel: Any, stopped: threading.Event, run: NodeRun) -> None:
    while not stopped.wait(0.5):
        if cancel():
            run.failure, run.detail = "canceled", "the controller canceled the job"
            channel.close()
            return


def _judge(run: NodeRun, stream: _WorkerStream, said: dict[str, Any]) -> None:
    """Name how a job that reached the worker ended (nothing when the worker finished its run)."""
    explanation = str(said.get("job_explanation") or "")
    if run.failure == "canceled":
        run.status = "canceled"
    elif said.get("unsent"):
        run.failure, run.ran = "node_error", False
        run.detail = f"the job could not be sent: {said['unsent']}"[:300]
    elif stream.silent:
        run.failure = "node_silent"
        run.detail = f"no output and no keepalive for {stream.channel.gettimeout():g}s: the node was cut off"
    elif stream.late:
        run.failure = "node_deadline"
        run.detail = f"the job ran past its deadline of {stream.limit:g}s: the node was cut off"
    elif stream.corrupt:
        run.failure, run.detail = "node_stream_corrupt", stream.corrupt[:300]
    elif not stream.ended:
        run.failure = "node_lost"
        run.detail = f"the stream ended after {stream.bytes} bytes, before the worker's end mark"
    elif run.status == "error":
        run.failure, run.detail = "node_error", explanation[:300] or "the worker reported an error"
        run.ran = run.events > 0
