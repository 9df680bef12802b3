"""The live view of `rollout start --wait` on a real terminal: a pty of a given size, its bytes replayed on pyte's
terminal emulator. One frame on screen at the end (old frames do not pile up), the driver's lines kept above it,
the overall bar on a line of its own, and each wave's bar coloured by its outcomes."""

import pyte
import pytest

from .controllerhelpers import fleet_db, register
from .ptyhelpers import run_in_terminal

pytestmark = pytest.mark.ansible
PATCH = "livepatch_cve_2026_1234"
FAULTS = {
    "sim-03": {"refuse": {"patch": "*", "object": "vmlinux", "errno": "ENODEV"}},
    "sim-05": {"stall": {"function": "*", "seconds": "forever"}},
}


def run_in_pty(args: list[str], columns: int, lines: int, env: dict[str, str], timeout: float = 240):
    """Run klpfleet on a pty of this size; (exit status, pyte screen with its scrollback)."""
    code, drawn = run_in_terminal(args, env, columns=columns, lines=lines, timeout=timeout)
    screen = pyte.HistoryScreen(columns, lines, history=5000)
    pyte.ByteStream(screen).feed(drawn)
    return code, screen


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
    assert any("sim-05: stalled (transition_stalled)" in line and "held by app_worker" in line for line in lines)

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
