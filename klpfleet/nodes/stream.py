"""One job on one execution node: ansible-runner's transmit into an SSH channel to `ansible-runner worker` on
the node, and ansible-runner's process on what comes back, each event handed to the caller as it arrives.

Whatever goes wrong is named, because the gate and the operator treat the cases differently:

- node_unreachable   the node could not be reached or its worker-info failed: no job was sent, nothing ran;
- node_incompatible  it answered, but with an ansible-runner klpfleet does not stream to: nothing ran;
- node_lost          the stream ended before the worker's end mark (worker killed, node down, SSH cut);
- node_silent        no byte, not even a keepalive, for the node's `silent_after_seconds`: the channel is closed;
- node_stream_corrupt a line that is not ansible-runner's JSON, or an artifacts archive that does not unpack;
- node_error         the worker itself reported an error (it could not unpack the job, no ansible-playbook).

After node_lost, node_silent and node_stream_corrupt, hosts without a result are in flight: the job may have
touched them, and only reading them (patch_info) can tell.
"""

from __future__ import annotations

import io
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
    "node_error",
    "no_node",
)


@dataclass
class Job:
    """What the controller streams: a private data dir (project, inventory) and ansible-runner's kwargs."""

    private_data_dir: Path
    playbook: str  # relative to project/
    forks: int
    ident: str
    extravars: dict[str, Any] = field(default_factory=dict)
    envvars: dict[str, str] = field(default_factory=dict)


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


class _Stream:
    """The channel's output as ansible-runner's Processor reads it, remembering how it ended."""

    def __init__(self, channel: Any) -> None:
        self.file = channel.makefile("rb")
        self.silent = False
        self.ended = False  # the worker's end mark ({"eof": true}) arrived
        self.cut = False
        self.bytes = 0

    def readline(self, *args: Any) -> bytes:
        line: bytes = self._call(self.file.readline, *args)
        if line.startswith(b'{"eof"'):
            self.ended = True
        elif line and not line.endswith(b"\n"):
            self.cut = True  # the stream stopped mid-line: truncated, not corrupt
        return line

    def read(self, *args: Any) -> bytes:
        data: bytes = self._call(self.file.read, *args)
        return data

    def _call(self, fn: Callable[..., bytes], *args: Any) -> bytes:
        try:
            data = fn(*args)
        except TimeoutError:
            self.silent = True
            raise
        self.bytes += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def run_job(
    node: Node,
    job: Job,
    process_dir: Path,
    on_event: Callable[[dict[str, Any]], None],
    cancel: Callable[[], bool] | None = None,
) -> NodeRun:
    """Stream `job` to `node`, feed each returned event to `on_event`; never raises for a node's failure."""
    start = time.monotonic()
    run = NodeRun(node.name)
    try:
        _run(node, job, process_dir, on_event, cancel, run)
    finally:
        run.seconds = round(time.monotonic() - start, 3)
    return run


def _run(
    node: Node,
    job: Job,
    process_dir: Path,
    on_event: Callable[[dict[str, Any]], None],
    cancel: Callable[[], bool] | None,
    run: NodeRun,
) -> None:
    import ansible_runner

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
        stream = _Stream(channel)

        def handle(event: dict[str, Any]) -> bool:
            run.events += 1
            on_event(event)
            return False  # the controller records events; it keeps no per-event files

        def status(data: dict[str, Any], runner_config: Any = None) -> None:
            said.update(data)

        try:
            processor = ansible_runner.run(
                streamer="process",
                _input=stream,
                private_data_dir=str(process_dir),
                ident=job.ident,
                event_handler=handle,
                status_handler=status,
                quiet=True,
            )
            run.status = processor.status
        except Exception as exc:  # ansible-runner's Processor lets a broken artifacts archive through
            run.status, said["broken"] = "error", f"{type(exc).__name__}: {exc}"
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
            extravars=job.extravars,
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


def _judge(run: NodeRun, stream: _Stream, said: dict[str, Any]) -> None:
    """Name how a job that reached the worker ended (nothing when the worker finished its run)."""
    explanation = str(said.get("job_explanation") or "")
    if run.failure == "canceled":
        run.status = "canceled"
    elif said.get("unsent"):
        run.failure, run.ran = "node_error", False
        run.detail = f"the job could not be sent: {said['unsent']}"[:300]
    elif stream.silent:
        run.failure = "node_silent"
        run.detail = f"no output and no keepalive for {stream.file.channel.gettimeout():g}s: the node was cut off"
    elif not stream.cut and ("JSON parse" in explanation or said.get("broken")):
        run.failure, run.detail = "node_stream_corrupt", (explanation or str(said["broken"]))[:300]
    elif not stream.ended:
        run.failure = "node_lost"
        run.detail = f"the stream ended after {stream.bytes} bytes, before the worker's end mark"
    elif run.status == "error":
        run.failure, run.detail = "node_error", explanation[:300] or "the worker reported an error"
        run.ran = run.events > 0
