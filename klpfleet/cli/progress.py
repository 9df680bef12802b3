"""Driving a rollout from the CLI: in the background, or here with its progress lines and (on a terminal) the live
view redrawn from the database. `rollout start/resume/promote/abort --wait`, `reconcile --wait` and the demo all
drive through here."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from klpfleet.cli.context import database
from klpfleet.cli.output import console, info, printable
from klpfleet.wording import counted

# Exit codes of `rollout start/resume --wait` and `rollout status`: 0 completed; 1 paused, aborted or rolled
# back (or an abort stopped midway); 2 the controller failed; 3 not finished yet (status without --watch, or
# --watch past its --timeout); 4 (--watch) the rollout runs with no driver: its controller stopped.
EXIT = {"completed": 0, "paused": 1, "aborted": 1, "rolled_back": 1, "failed": 2}
NOT_FINISHED = 3
NO_DRIVER = 4


def drive_or_detach(ctx: click.Context, rollout_id: int, wait: bool) -> None:
    if not wait:
        from klpfleet.controller.control import spawn_driver

        log = spawn_driver(database(ctx), rollout_id)
        info(
            f"rollout {rollout_id} is being driven in the background (log: {log}); "
            f"watch it with `klpfleet rollout status {rollout_id} --watch`"
        )
        return
    ctx.exit(drive(ctx, rollout_id))


def drive(ctx: click.Context, rollout_id: int) -> int:
    from klpfleet.controller.driver import Driver
    from klpfleet.errors import KlpfleetError

    db = database(ctx)
    live = LiveRollout(db, rollout_id) if sys.stderr.isatty() and not os.environ.get("KLPFLEET_NO_LIVE") else None
    progress = CliProgress(rollout_id, live.print if live is not None else None)
    driver = Driver(db, rollout_id, progress=progress)
    try:
        with live or contextlib.nullcontext():
            final = driver.drive()
    except KlpfleetError as exc:
        click.echo(f"klpfleet: error: {exc}", err=True)
        return 2
    except Exception as exc:
        if ctx.find_root().obj.get("debug"):
            raise
        click.echo(
            f"klpfleet: controller error: {type(exc).__name__}: {exc} (resume with `klpfleet rollout resume "
            f"{rollout_id}`)",
            err=True,
        )
        return 2
    progress.line(f"rollout {rollout_id}: {final}", "finished", status=final)
    if driver.stop.is_set():
        ctx.meta["klpfleet.stopped_by_signal"] = True  # a loop of drives (reconcile --wait) ends here too
    return EXIT.get(final, 1 if final == "aborting" else 2)


class CliProgress:
    """Progress lines on stderr: plain text readable in a terminal, a log file and CI alike, or with
    KLPFLEET_LOG_FORMAT=json one JSON object per line (at, rollout, elapsed, kind, message and the figures), for a
    log shipper. The background driver's log (driver.log) is written the same way."""

    def __init__(self, rollout_id: int | None = None, printer: Callable[[str], None] | None = None) -> None:
        self.start = time.monotonic()
        self.rollout_id = rollout_id
        self.json = os.environ.get("KLPFLEET_LOG_FORMAT", "text").lower() == "json"
        self.printer = printer  # the live view's console, when there is one

    def line(self, text: str, kind: str = "note", **fields: Any) -> None:
        elapsed = time.monotonic() - self.start
        if self.printer is not None:
            self.printer(f"[{elapsed:7.1f}s] {printable(text)}")
            return
        if not self.json:
            info(f"[{elapsed:7.1f}s] {text}")
            return
        import json
        from datetime import UTC, datetime

        from klpfleet.reads.envelope import iso, plain

        record = {"at": iso(datetime.now(UTC)), "rollout": self.rollout_id, "elapsed": round(elapsed, 3), "kind": kind}
        click.echo(json.dumps(plain({**record, "message": text, **fields}), separators=(",", ":")), err=True)

    def wave(self, index: int, total: int, domain: str | None, hosts: int) -> None:
        self.line(
            f"wave {index + 1}/{total}{f' ({domain})' if domain else ''}: {counted(hosts, 'host')}",
            "wave",
            wave=index + 1,
            waves=total,
            domain=domain,
            hosts=hosts,
        )

    def counts(self, index: int, counts: Any) -> None:
        c = counts.as_dict()
        self.line(
            f"wave {index + 1}: applied {c['applied']}, refused {c['refused']}, failed {c['failed']}"
            + (f", pending {c['pending']}" if c["pending"] else ""),
            "counts",
            wave=index + 1,
            counts=c,
        )

    def note(self, text: str) -> None:
        self.line(text)


class LiveRollout:
    """`--wait` on a terminal: the live view redrawn from the database while the driver runs in the foreground.
    The driver's lines are printed through the live display's own console, so they scroll above the view and
    the view stays one frame; anything else written to stderr meanwhile is routed above it too. Piped or
    redirected output gets the lines only."""

    def __init__(self, db: Any, rollout_id: int, interval: float = 0.5) -> None:
        import threading

        from rich.live import Live

        self.db, self.rollout_id, self.interval = db, rollout_id, interval
        self.live = Live(console=console(stderr=True), auto_refresh=False, redirect_stderr=True, transient=False)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="klpfleet-live", daemon=True)

    def __enter__(self) -> LiveRollout:
        self.live.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self._frame()  # the final state
        self.live.stop()

    def print(self, text: str) -> None:
        from rich.text import Text

        self.live.console.print(Text(text))

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self._frame()

    def _frame(self) -> None:
        from klpfleet.cli.rollout_view import rollout_view
        from klpfleet.reads.rollouts import rollout_record

        with contextlib.suppress(Exception), self.db.session() as s:  # a busy database skips a frame
            self.live.update(rollout_view(rollout_record(s, self.rollout_id, event_limit=8)), refresh=True)
