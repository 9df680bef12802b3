"""The kernel's livepatch selftests as kselftest's runner reads them: which scripts a suite has (its Makefile's
TEST_PROGS), and each script's verdict from its exit status and its `TEST: ... ok` lines. Shared by the lab (a
real kernel) and the simulator's runner, so both are judged by one reading."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

TEST_LINE = re.compile(r"^TEST: (?P<name>.+?) \.\.\. (?P<verdict>ok|not ok)$")
SCRIPT_NAME = re.compile(r"test-[a-z0-9-]+\.sh")
SKIP_EXIT = 4  # kselftest's "skipped"
DETAIL_LINES = 40


def suite_scripts(suite: Path) -> list[str]:
    """The scripts of upstream's TEST_PROGS, in its Makefile's order."""
    makefile = (suite / "Makefile").read_text()
    names = SCRIPT_NAME.findall(makefile)
    return list(dict.fromkeys(n for n in names if (suite / n).exists()))


@dataclass
class ScriptOutcome:
    """One upstream script's run: its verdict (pass, fail, skip), each TEST line's, and why it failed."""

    script: str
    verdict: str
    exit_code: int | None
    tests: list[tuple[str, bool]] = field(default_factory=list)
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "script": self.script,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "tests": [{"test": name, "ok": ok} for name, ok in self.tests],
            "detail": self.detail,
        }


def judge_script(script: str, exit_code: int | None, stdout: str, stderr: str) -> ScriptOutcome:
    """kselftest's reading of a script: exit 0 passes, 4 skips, anything else fails; plus its TEST lines."""
    tests = [(m["name"], m["verdict"] == "ok") for m in map(TEST_LINE.match, stdout.splitlines()) if m]
    verdict = "pass" if exit_code == 0 else "skip" if exit_code == SKIP_EXIT else "fail"
    detail = ""
    if verdict != "pass":
        lines = [ln for ln in (stderr.strip() + "\n" + stdout.strip()).splitlines() if ln.strip()]
        detail = "\n".join(lines[-DETAIL_LINES:])
    return ScriptOutcome(script, verdict, exit_code, tests, detail)
