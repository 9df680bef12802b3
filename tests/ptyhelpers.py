"""klpfleet on a pseudo-terminal of a given size, as a person runs it in a terminal window."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time


def run_in_terminal(
    argv: list[str], env: dict[str, str] | None = None, columns: int = 160, lines: int = 50, timeout: float = 300
) -> tuple[int, bytes]:
    """argv with a pty as stdin, stdout and stderr; (exit code, every byte it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    environ = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(lines), **(env or {})}
    for name in ("KLPFLEET_NO_LIVE", "NO_COLOR"):  # the terminal as a person has it
        environ.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "klpfleet.cli.main", *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=environ,
        close_fds=True,
        start_new_session=True,
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other side closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks)
