"""The runner that gives unchanged selftest scripts a simulated kernel (`klpfleet sim selftests`), proven on a
small suite of this test's own written the way upstream's are: the scripts touch the real paths (/sys, /proc,
/dev/kmsg) and the real tool names, and must reach the simulated kernel through them. Upstream's own suite runs
through the same runner in tests/test_lab_upstream.py (it needs the lab's copy of Debian's linux-source)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from klpfleet.sim import upstream_suite

from .conftest import run_klpfleet

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces and FUSE need root")

FUNCTIONS = r"""
log() { echo "$1" > /dev/kmsg; }
die() { log "ERROR: $1"; echo "ERROR: $1" >&2; exit 1; }
loop_until() { local i=0; while ! eval "$1"; do [ $((i++)) -eq 300 ] && return 1; sleep .1; done; }
"""

WORKS = r"""#!/bin/bash
. $(dirname $0)/functions.sh
echo -n "TEST: through the real paths ... "
log "% insmod test_modules/test_klp_livepatch.ko"
insmod test_modules/test_klp_livepatch.ko || die "insmod"
loop_until '[[ -e /sys/module/test_klp_livepatch ]]' || die "no /sys/module entry"
loop_until 'grep -q "^0$" /sys/kernel/livepatch/test_klp_livepatch/transition' || die "transition"
[[ "$(cat /proc/cmdline)" == "test_klp_livepatch: this has been live patched" ]] || die "cmdline: $(cat /proc/cmdline)"
[[ "$(stat --format %A /sys/kernel/livepatch/test_klp_livepatch/force)" == "--w-------" ]] || die "force mode"
[[ "$(modinfo test_modules/test_klp_livepatch.ko | awk '/^livepatch:/{print $NF}')" == Y ]] || die "modinfo"
echo 0 > /sys/kernel/livepatch/test_klp_livepatch/enabled || die "disable"
loop_until '[[ ! -e /sys/kernel/livepatch/test_klp_livepatch ]]' || die "still enabled"
loop_until '[[ $(cat /sys/module/test_klp_livepatch/refcnt) == 0 ]]' || die "refcnt"
rmmod test_klp_livepatch || die "rmmod"
echo 1 > /sys/kernel/livepatch/nosuch/enabled 2>/dev/null && die "a write to a missing patch succeeded"
dmesg | grep -q "livepatch: 'test_klp_livepatch': unpatching complete" || die "kernel log"
grep -q test_klp /proc/modules && die "/proc/modules still lists it"
echo ok
"""

FAILS = r"""#!/bin/bash
. $(dirname $0)/functions.sh
echo -n "TEST: a kernel that says no ... "
insmod test_modules/test_klp_callbacks_demo.ko pre_patch_ret=-19 && die "loaded"
echo "not ok"
exit 1
"""

HANGS = r"""#!/bin/bash
sleep 300 &
sleep 300
"""


def write_suite(root: Path, scripts: dict[str, str]) -> Path:
    suite = root / "livepatch"
    (suite / "test_modules").mkdir(parents=True)
    (suite / "functions.sh").write_text(FUNCTIONS)
    (suite / "Makefile").write_text("TEST_PROGS := " + " ".join(scripts) + "\n")
    for name, body in scripts.items():
        (suite / name).write_text(body)
        (suite / name).chmod(0o755)
    return suite


def mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_unchanged_scripts_reach_the_simulated_kernel_through_the_real_paths_and_tools(tmp_path):
    suite = write_suite(tmp_path, {"test-works.sh": WORKS, "test-fails.sh": FAILS})
    proc = run_klpfleet(
        "sim",
        "selftests",
        str(suite),
        "--kernel-release",
        "6.12.117+deb13-amd64",
        "-o",
        "json",
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    report = json.loads(proc.stdout)["data"]
    verdicts = {s["script"]: s for s in report["scripts"]}
    assert verdicts["test-works.sh"]["verdict"] == "pass", verdicts["test-works.sh"]["detail"]
    assert verdicts["test-works.sh"]["tests"] == [{"test": "through the real paths", "ok": True}]
    assert verdicts["test-fails.sh"]["verdict"] == "fail"
    assert verdicts["test-fails.sh"]["tests"] == [{"test": "a kernel that says no", "ok": False}]
    assert proc.returncode == 1  # one failed
    assert str(tmp_path) not in mounts()  # nothing left mounted
    assert "this has been live patched" not in Path("/proc/cmdline").read_text()  # the real one was never touched


def test_a_script_that_hangs_is_killed_with_all_it_started(tmp_path, monkeypatch):
    monkeypatch.setattr(upstream_suite, "SCRIPT_TIMEOUT", 2.0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    suite = write_suite(tmp_path, {"test-hangs.sh": HANGS})
    report = upstream_suite.run_suite(suite, "6.1.0-50-amd64", [], lambda _: None)
    (outcome,) = report["scripts"]
    assert outcome["verdict"] == "fail" and "timed out after 2 s" in outcome["detail"]
    assert outcome["seconds"] < 30
    assert str(tmp_path) not in mounts()
    leftovers = [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p) == "sleep\x00300\x00"]
    assert leftovers == []


def _cmdline(pid_dir: Path) -> str:
    try:
        return (pid_dir / "cmdline").read_text()
    except OSError:
        return ""


def test_a_script_the_simulator_does_not_model_is_reported_with_the_reason_not_run(tmp_path):
    suite = write_suite(tmp_path, {"test-kprobe.sh": HANGS})
    report = upstream_suite.run_suite(suite, "6.1.0-50-amd64", [], lambda _: None)
    (outcome,) = report["scripts"]
    assert outcome["verdict"] == "out of scope" and "kprobes" in outcome["reason"]
    assert report["failed"] == 0 and report["out_of_scope"] == 1


def test_a_directory_that_is_not_the_suite_is_refused_in_one_line(tmp_path):
    proc = run_klpfleet("sim", "selftests", str(tmp_path))
    assert proc.returncode == 2 and "not the kernel's livepatch selftests" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_ctrl_c_stops_the_run_and_leaves_nothing_mounted_or_running(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    suite = write_suite(tmp_path, {"test-hangs.sh": HANGS.replace("300", "301")})
    proc = subprocess.Popen(
        [sys.executable, "-m", "klpfleet.cli.main", "sim", "selftests", str(suite)],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(_cmdline(p) == "sleep\x00301\x00" for p in Path("/proc").glob("[0-9]*")):
        assert time.monotonic() < deadline and proc.poll() is None, "the script never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    said = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and said[-1] == "klpfleet: aborted" and len(said) <= 2  # progress, then one line
    assert str(tmp_path) not in mounts()
    assert not any(_cmdline(p) == "sleep\x00301\x00" for p in Path("/proc").glob("[0-9]*"))
