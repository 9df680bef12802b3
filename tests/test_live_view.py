"""The live view of `rollout start --wait` on a real terminal: a pty of a given size, its bytes replayed on pyte's
terminal emulator. One frame on screen at the end (old frames do not pile up), the driver's lines kept above it,
the overall bar on a line of its own, and each wave's bar coloured by its outcomes."""

import os
import pty
import select
import struct
import subprocess
import sys
import time

import pyte
import pytest

from .controllerhelpers import fleet_db, register

pytestmark = pytest.mark.ansible
PATCH = "livepatch_cve_2026_1234"
FAULTS = {
    "sim-03": {"refuse": {"patch": "*", "object": "vmlinux", "errno": "ENODEV"}},
    "sim-05": {"stall": {"function": "*", "seconds": "forever"}},
}


def run_in_pty(args: list[str], columns: int, lines: int, env: dict[str, str], timeout: float = 240):
    """Run klpfleet on a pty of this size; (exit status, pyte screen with its scrollback)."""
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    env = {**os.environ, **env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(lines)}
    env.pop("KLPFLEET_NO_LIVE", None)
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "klpfleet.cli.main", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    screen = pyte.HistoryScreen(columns, lines, history=5000)
    stream = pyte.ByteStream(screen)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            stream.feed(chunk)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=10), screen


def text_of(line) -> str:
    return "".join(line[x].data for x in sorted(line)).rstrip() if line else ""


def all_lines(screen) -> list[str]:
    return [text_of(line) for line in screen.history.top] + [line.rstrip() for line in screen.display]


@pytest.mark.parametrize("size", [(160, 45), (250, 60)])
def test_one_frame_the_driver_lines_above_it_and_bars_coloured_by_outcome(tmp_path, monkeypatch, size):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=8, faults=FAULTS)
    register(db, tmp_path)
    env = {"KLPFLEET_RUN_DIR": str(tmp_path / "runs")}
    create = ["--db", url, "rollout", "create", PATCH, "--waves", "1,50%", "--max-failed", "5"]
    code, _ = run_in_pty([*create, "--bake", "2s", "--transition-timeout", "2s"], *size, env)
    assert code == 0
    code, screen = run_in_pty(["--db", url, "rollout", "start", "1", "--wait"], *size, env)
    assert code == 0
    lines = all_lines(screen)
    headers = [line for line in lines if line.startswith("rollout 1 livepatch_cve_2026_1234")]
    assert len(headers) == 1 and "COMPLETED" in headers[0], headers  # one frame: none of the RUNNING ones left
    for said in ("wave 1 passed its gate", "baking for 2s after wave 1", "wave 2: applied 2, refused 1, failed 1"):
        assert any(said in line for line in lines), said  # the driver's lines survive the redraws
    assert lines[-1] == "" or "rollout 1: completed" in "\n".join(lines[-20:])
    top = lines.index(headers[0])
    assert set(lines[top + 1]) == {"━"}  # the overall bar has its line to itself
    assert lines[top + 2].split() == ["wave", "domain", "status", "progress", "hosts", "outcomes"]
    assert any("sim-03: refused (refused)" in line for line in lines)
    assert any("sim-05: stalled (transition_stalled)" in line for line in lines)

    # Wave 2 (2 applied, 1 refused, 1 stalled): green, yellow and red cells in its bar, not a green bar.
    row = next(y for y, line in enumerate(screen.display) if line.lstrip().startswith("2 ") and "completed" in line)
    colours = {screen.buffer[row][x].fg for x in range(size[0]) if screen.buffer[row][x].data == "━"}
    assert {"green", "brown", "red"} <= colours, colours  # pyte calls ANSI yellow (33) "brown"


def test_a_view_taller_than_the_terminal_still_leaves_one_frame(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=8, faults=FAULTS)
    register(db, tmp_path)
    env = {"KLPFLEET_RUN_DIR": str(tmp_path / "runs")}
    code, _ = run_in_pty(["--db", url, "rollout", "create", PATCH, "--waves", "1,1,1,1,1,1,1,1"], 100, 18, env)
    assert code == 0
    code, screen = run_in_pty(["--db", url, "rollout", "start", "1", "--wait"], 100, 18, env)
    assert code == 1  # the refusal pauses the rollout (no budget for it here)
    on_screen = [line for line in screen.display if line.startswith("rollout 1 ")]
    assert len(on_screen) <= 1, on_screen
