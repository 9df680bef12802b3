"""Why a driver stops before a wave's gate: an operator's pause or abort, a failed execution node, or a signal.

Ctrl-C (SIGINT) or SIGTERM while a driver runs: the first stops the current playbook run at once and pauses the
rollout at the driver's next step (the hosts in flight stay marked so, and are read again when it resumes); a
second ends the process as Python would."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Halt(StrEnum):
    """Why a wave's work stopped before its gate."""

    PAUSE = "pause"  # an operator asked for a pause
    ABORT = "abort"  # an operator asked for an abort
    NODE_FAILED = "node_failed"  # a failed execution node left hosts in flight; the rollout is paused already
    ANALYSIS = "analysis"  # a background check failed or turned inconclusive
    PROMOTED = "promoted"  # `promote --full` during a wave's analysis: the operator judged, the checks are given up


class OperatorStop(Exception):
    """Raised at the driver's next safe point once a stop signal arrived."""


class StopRequest:
    """Whether a stop signal arrived, and which: set from a signal handler, read by the driver's steps and by
    ansible-runner's cancel callback."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name = ""

    def is_set(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        if self.event.is_set():
            raise OperatorStop(self.signal_name)

    @contextmanager
    def on_signals(self) -> Iterator[None]:
        """Catch the stop signals while the block runs (only the main thread can); the previous handlers after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.event.is_set():
                raise KeyboardInterrupt  # the second signal: stop now, as without klpfleet
            self.signal_name = signal.Signals(signum).name
            self.event.set()

        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
