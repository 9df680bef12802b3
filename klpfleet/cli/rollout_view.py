"""How a rollout looks on a terminal: its status as a coloured badge, each wave as a bar with a segment per outcome,
the hosts in flight, the bake's countdown, the hosts that refused, stalled or failed with their reason, the last
decision and the latest events. The live view (`--wait`, `--watch`) and `rollout status` draw from here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from klpfleet.cli.output import cell, printable
from klpfleet.wording import short_list

# A wave's hosts in the order a bar shows them: what went well, what is under way, what went wrong.
SEGMENTS = (
    ("applied", "green"),
    ("rolled_back", "cyan"),
    ("running", "blue"),
    ("pending", "grey50"),
    ("refused", "yellow"),
    ("stalled", "red"),
    ("failed", "red"),
    ("unreachable", "magenta"),
    ("health_failed", "red"),
)
STATUS_STYLE = {
    "planned": "grey50",
    "running": "bold blue",
    "paused": "bold black on yellow",
    "aborting": "bold white on red",
    "completed": "bold green",
    "aborted": "bold red",
    "rolled_back": "bold red",
    "failed": "bold white on red",
}
DECISIONS = ("gate.evaluated", "rollout.paused", "rollout.promoted", "rollout.completed", "rollout.aborted")
ATTENTION = ("refused", "stalled", "failed", "unreachable", "health_failed")


def outcome_bar(counts: dict[str, int], total: int, width: int = 20) -> Any:
    """A bar of `width` cells, one coloured segment per outcome in proportion (every outcome present gets at least
    one cell): a wave with a refusal and a stall is never a full green bar."""
    from rich.text import Text

    present = [(key, style, counts[key]) for key, style in SEGMENTS if counts.get(key)]
    present += [(key, "white", n) for key, n in counts.items() if n and key not in dict(SEGMENTS)]
    cells = {key: max(1, round(width * n / max(total, 1))) for key, _style, n in present}
    while sum(cells.values()) > width and max(cells.values(), default=0) > 1:
        biggest = max(cells, key=lambda k: cells[k])
        cells[biggest] -= 1
    bar = Text()
    for key, style, _n in present:
        bar.append("━" * cells[key], style=style)
    if len(bar) < width:
        bar.append("━" * (width - len(bar)), style="grey23")
    return bar


def status_badge(status: str) -> Any:
    from rich.text import Text

    return Text(f" {status.upper()} ", style=STATUS_STYLE.get(status, "bold"))


def bake_left(d: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds left of the bake under way (from its wave.bake_started event), or None when there is none."""
    for e in d["events"]:  # newest first
        if e["kind"] == "wave.bake_ended":
            return None
        if e["kind"] == "wave.bake_started":
            at = e["at"] if e["at"].tzinfo else e["at"].replace(tzinfo=UTC)
            seconds = float((e["details"] or {}).get("seconds") or 0)
            return max(0.0, seconds - ((now or datetime.now(UTC)) - at).total_seconds())
    return None


def rollout_view(d: dict[str, Any], *, events: int = 6) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    total = sum(len(w["hosts"]) for w in d["waves"])
    done = sum(1 for w in d["waves"] for h in w["hosts"] if h["status"] in ("done", "rolled_back"))
    header = Text.assemble(f"rollout {d['id']} {d['patch']}  ", status_badge(d["status"]), f"  {done}/{total} hosts")
    header.append(f"  ({d['driver']})", style="grey50")
    overall = Table.grid()  # a grid row ends the line: the bar never runs into what follows
    overall.add_row(outcome_bar(_all_outcomes(d), total, width=60))
    lines: list[Any] = [header, overall]
    if d["pause_reason"] and d["status"] in ("paused", "aborting", "aborted", "rolled_back", "failed"):
        lines.append(Text(printable(f"{d['status']}: {d['pause_reason']}"), style="yellow"))
    left = bake_left(d) if d["status"] == "running" else None
    if left is not None:
        lines.append(Text(f"baking: {left:.0f}s left (`klpfleet rollout promote {d['id']}` skips it)"))
    waves = Table("wave", "domain", "status", "progress", "hosts", "outcomes", box=None)
    for w in d["waves"]:
        finished = sum(1 for h in w["hosts"] if h["status"] in ("done", "rolled_back"))
        outcomes = ", ".join(f"{k} {v}" for k, v in w["outcomes"].items())
        bar = outcome_bar(w["outcomes"], len(w["hosts"]))
        waves.add_row(
            str(w["index"] + 1), w["domain"] or "", w["status"], bar, f"{finished}/{len(w['hosts'])}", outcomes
        )
    lines.append(waves)
    lines += analysis_lines(d)
    flying = [h["host"] for w in d["waves"] for h in w["hosts"] if h["status"] == "running"]
    if flying:
        lines.append(Text(f"in flight ({len(flying)}): {short_list(flying)}", style="blue"))
    attention = [h for w in d["waves"] for h in w["hosts"] if h["outcome"] in ATTENTION]
    for h in attention[:8]:
        held = f", held by {h['held_by']}" if h.get("held_by") else ""
        said = f"  {h['host']}: {h['outcome']} ({h['error_code'] or '-'}), attempts {h['attempts']}{held}"
        lines.append(Text(printable(said)))  # what a host reported (a task's comm, its stack) is never a control code
    if len(attention) > 8:
        lines.append(Text(f"  ... and {len(attention) - 8} more (`klpfleet rollout status {d['id']}`)"))
    decision = next((e for e in d["events"] if e["kind"] in DECISIONS), None)
    if decision is not None:
        details = decision["details"] or {}
        said = details.get("reason") or details.get("verdict") or ""
        lines.append(Text(printable(f"last decision: {decision['kind']} {said}".rstrip())))
    recent = Table("at", "event", "details", box=None)
    for e in d["events"][:events]:
        recent.add_row(cell(e["at"]), e["kind"], cell(e["details"])[:120])
    lines.append(recent)
    return Group(*lines)


def analysis_lines(d: dict[str, Any]) -> list[Any]:
    """Per wave: its transition times and its analysis, each check's latest measurement (what a host or an event
    row said is escaped like every other line)."""
    from rich.text import Text

    lines: list[Any] = []
    for w in d["waves"]:
        number, t, a = w["index"] + 1, w.get("transition"), w.get("analysis")
        if t:
            said = f"wave {number} transitions: p50 {t['p50']:g}s, p95 {t['p95']:g}s, max {t['max']:g}s ({t['hosts']})"
            lines.append(Text(said, style="grey50"))
        if not a:
            continue
        style = {"passed": "green", "failed": "red", "measuring": "blue"}.get(str(a["result"]), "yellow")
        lines.append(Text(printable(f"wave {number} analysis: {a['result']}"), style=style))
        lines += [Text(printable(f"  {measured(name, m)}")) for name, m in sorted(a["checks"].items())]
    for name, m in sorted((d.get("background_analysis") or {}).items()):
        lines.append(Text(printable(f"background {measured(name, m)} (wave {m.get('wave')})")))
    return lines


def measured(name: str, m: dict[str, Any]) -> str:
    """A check's latest measurement in one line: its value, its result and why."""
    value = m.get("value")
    shown = f"{value:g}" if isinstance(value, (int, float)) else str(value)
    return f"{name}: {shown} {m.get('result')}" + (f" ({m['reason']})" if m.get("reason") else "")


def _all_outcomes(d: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for w in d["waves"]:
        for key, n in w["outcomes"].items():
            counts[key] = counts.get(key, 0) + n
    return counts
