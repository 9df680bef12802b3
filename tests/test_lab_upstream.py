"""The kernel's own livepatch selftests (tools/testing/selftests/livepatch of Debian's linux-source for the lab
kernel), run unchanged on a lab VM through `klpfleet lab selftests`: every script of upstream's TEST_PROGS must
pass, on every lab kernel. The suite judges the lab's kernels and VMs as upstream judges a kernel; a failure here
is a lab problem (or a kernel one) to explain in docs/lab.md before anything else is believed."""

from __future__ import annotations

import json

import pytest

from klpfleet.lab.artifacts import cache_dir
from klpfleet.lab.upstream import SUITE_DIR
from klpfleet.sim.kselftest import suite_scripts
from klpfleet.sim.upstream_suite import OUT_OF_SCOPE, OUT_OF_SCOPE_TESTS

from .conftest import run_klpfleet
from .labhelpers import Lab

pytestmark = pytest.mark.lab

# What each generation's suite must at least contain (scripts and tests added upstream over time), so that a
# suite that silently lost a script cannot pass.
AT_LEAST = {
    (5, 10): {"test-livepatch.sh", "test-callbacks.sh", "test-shadow-vars.sh", "test-state.sh", "test-ftrace.sh"},
    (6, 1): {"test-sysfs.sh"},
    (6, 12): {"test-syscall.sh"},
    (7, 0): {"test-kprobe.sh"},
}


def expected_scripts(version: tuple[int, int]) -> set[str]:
    return set().union(*(scripts for since, scripts in AT_LEAST.items() if version >= since))


def test_the_kernels_own_livepatch_selftests_pass_unchanged(clean_lab: Lab):
    proc = run_klpfleet(
        "lab", "selftests", "--dir", str(clean_lab.directory), "--vm", "lab3", "-o", "json", timeout=3600
    )
    report = json.loads(proc.stdout)["data"]
    failed = {s["script"]: s["detail"] for s in report["scripts"] if s["verdict"] != "pass"}
    assert proc.returncode == 0 and not failed, f"{report['release']}: {json.dumps(failed, indent=1)}"

    ran = [s["script"] for s in report["scripts"]]
    assert ran == suite_scripts(cache_dir() / f"upstream-{report['release']}" / SUITE_DIR)  # upstream's order, all
    assert expected_scripts(clean_lab.version) <= set(ran)
    tests = [t for s in report["scripts"] for t in s["tests"]]
    assert tests and all(t["ok"] for t in tests)
    assert report["source"].startswith("linux-source-")
    if clean_lab.version >= (6, 13):  # upstream checks the kernel's stack_order on the kernels that have it
        sysfs = next(s for s in report["scripts"] if s["script"] == "test-sysfs.sh")
        assert "sysfs test stack_order value" in [t["test"] for t in sysfs["tests"]]
    # Upstream's scripts clean up after themselves: nothing of theirs is left loaded.
    assert clean_lab.sh("lab3", "ls /sys/kernel/livepatch; awk '/^test_klp/ {print $1}' /proc/modules") == ""


def test_the_same_suite_runs_unchanged_against_the_simulator(lab: Lab):
    """The kernel's suite of this lab kernel, against a simulated host playing the same release: every script
    the simulator models passes; what it does not model is named with the reason, never silently passed."""
    suite = cache_dir() / f"upstream-{lab.release}" / SUITE_DIR
    proc = run_klpfleet("sim", "selftests", str(suite), "--kernel-release", lab.release, "-o", "json", timeout=3600)
    report = json.loads(proc.stdout)["data"]
    by_verdict: dict[str, set[str]] = {}
    for script in report["scripts"]:
        by_verdict.setdefault(script["verdict"], set()).add(script["script"])
    failed = {s["script"]: s["detail"] for s in report["scripts"] if s["verdict"] in ("fail", "skip")}
    assert proc.returncode == 0 and not failed, f"{lab.release}: {json.dumps(failed, indent=1)}"
    assert by_verdict.get("out of scope", set()) <= set(OUT_OF_SCOPE)
    assert by_verdict.get("partly out of scope", set()) <= set(OUT_OF_SCOPE_TESTS)
    # What the simulator claims to model, it passes in full on every generation.
    assert {"test-callbacks.sh", "test-state.sh", "test-shadow-vars.sh"} <= by_verdict["pass"]
    if lab.version >= (6, 1):
        assert "test-sysfs.sh" in by_verdict["pass"]
    if lab.version < (7, 0):  # suites before the module-function and tracing tests: all of livepatch and ftrace
        assert {"test-livepatch.sh", "test-ftrace.sh"} <= by_verdict["pass"]
    passed_tests = sum(t["ok"] for s in report["scripts"] for t in s["tests"])
    assert passed_tests >= 20  # 5.10's whole suite; later suites more
