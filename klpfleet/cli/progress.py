"""Driving a rollout from the CLI: in the background, or here with its progress lines and (on a terminal) the live
view redrawn from the database. `rollout start/resume/promote/abort --wait`, `reconcile --wait` and the demo all
drive through here."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import click

from klpfleet.cli.context import database
from klpfleet.cli.output import cell, console, info

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
    progress = CliProgress(rollout_id)
    try:
        with live or contextlib.nullcontext():
            final = Driver(db, rollout_id, progress=progress).drive()
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
    return EXIT.get(final, 1 if final == "aborting" else 2)


class CliProgress:
    """Progress lines on stderr: plain text readable in a terminal, a log file and CI alike, or with
    KLPFLEET_LOG_FORMAT=json one JSON object per line (at, rollout, elapsed, kind, message and the figures), for a
    log shipper. The background driver's log (driver.log) is written the same way."""

    def __init__(self, rollout_id: int | None = None) -> None:
        self.start = time.monotonic()
        self.rollout_id = rollout_id
        self.json = os.environ.get("KLPFLEET_LOG_FORMAT", "text").lower() == "json"

    def line(self, text: str, kind: str = "note", **fields: Any) -> None:
        elapsed = time.monotonic() - self.start
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
            f"wave {index + 1}/{total}{f' ({domain})' if domain else ''}: {hosts} host(s)",
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


DECISIONS = ("gate.evaluated", "rollout.paused", "rollout.promoted", "rollout.completed", "rollout.aborted")


def rollout_view(d: dict[str, Any]) -> Any:
    """The live view: the rollout's progress, one bar per wave with its counts per outcome, the hosts in flight,
    the last decision and the latest events."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    total = sum(len(w["hosts"]) for w in d["waves"])
    done = sum(1 for w in d["waves"] for h in w["hosts"] if h["status"] in ("done", "rolled_back"))
    header = Text(f"rollout {d['id']} {d['patch']}  {d['status'].upper()}  {done}/{total} hosts  ({d['driver']})")
    lines: list[Any] = [header, ProgressBar(total=max(total, 1), completed=done, width=60)]
    if d["pause_reason"]:
        lines.append(Text(f"paused: {d['pause_reason']}"))
    waves = Table("wave", "domain", "status", "progress", "hosts", "outcomes", box=None)
    for w in d["waves"]:
        finished = sum(1 for h in w["hosts"] if h["status"] in ("done", "rolled_back"))
        bar = ProgressBar(total=max(len(w["hosts"]), 1), completed=finished, width=20)
        outcomes = ", ".join(f"{k} {v}" for k, v in w["outcomes"].items())
        waves.add_row(
            str(w["index"] + 1), w["domain"] or "", w["status"], bar, f"{finished}/{len(w['hosts'])}", outcomes
        )
    lines.append(waves)
    flying = [h["host"] for w in d["waves"] for h in w["hosts"] if h["status"] == "running"]
    if flying:
        lines.append(Text(f"in flight ({len(flying)}): {short_list(flying)}"))
    decision = next((e for e in d["events"] if e["kind"] in DECISIONS), None)
    if decision is not None:
        details = decision["details"] or {}
        said = details.get("reason") or details.get("verdict") or ""
        lines.append(Text(f"last decision: {decision['kind']} {said}".rstrip()))
    recent = Table("at", "event", "details", box=None)
    for e in d["events"][:6]:
        recent.add_row(cell(e["at"]), e["kind"], cell(e["details"])[:120])
    lines.append(recent)
    return Group(*lines)


class LiveRollout:
    """`rollout start --wait` on a terminal: the live view redrawn from the database while the driver runs in the
    foreground; the driver's own lines scroll above it. Piped or redirected output gets the lines only."""

    def __init__(self, db: Any, rollout_id: int, interval: float = 0.5) -> None:
        import threading

        self.db, self.rollout_id, self.interval = db, rollout_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="klpfleet-live", daemon=True)

    def __enter__(self) -> LiveRollout:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        from rich.live import Live

        from klpfleet.reads.rollouts import rollout_record

        out = console(stderr=True)
        with Live(console=out, auto_refresh=False, redirect_stderr=True, transient=False) as live:
            finished = False
            while not finished:
                finished = self.stop.is_set()  # one last frame once the driver returned: the final state
                # A busy database skips a frame, never the rollout.
                with contextlib.suppress(Exception), self.db.session() as s:
                    live.update(rollout_view(rollout_record(s, self.rollout_id, event_limit=8)), refresh=True)
                self.stop.wait(self.interval)


def short_list(hosts: list[str], limit: int = 8) -> str:
    return ", ".join(hosts[:limit]) + (f" (+{len(hosts) - limit})" if len(hosts) > limit else "")
