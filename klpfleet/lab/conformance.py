"""The kernel's own livepatch selftests on a lab VM: one script over SSH as kselftest's runner would run it,
or the whole suite of the VM's kernel, judged as kselftest judges (klpfleet.sim.kselftest)."""

from __future__ import annotations

import time
from pathlib import Path

from klpfleet.errors import UsageError
from klpfleet.lab.artifacts import LabError, Progress, cache_dir
from klpfleet.lab.selftest import vm_target
from klpfleet.lab.upstream import SCRIPT_TIMEOUT, SUITE_DIR, ensure_upstream_suite
from klpfleet.lab.vms import LabState
from klpfleet.probe.ssh import OK, run_remote
from klpfleet.sim.kselftest import SCRIPT_NAME, ScriptOutcome, judge_script, suite_scripts

RUN_SCRIPT = "/root/lab/run-upstream.sh"


def run_on_vm(lab: Path, vm: str, script: str) -> ScriptOutcome:
    """Run one upstream script on a lab VM and judge it; an SSH failure is a LabError, not a test verdict."""
    if not SCRIPT_NAME.fullmatch(script):
        raise LabError(f"{script!r} is not a livepatch selftest name")
    target, known = vm_target(lab.resolve(), vm)
    result = run_remote(target, ["sh", RUN_SCRIPT, script], "", known, 10.0, SCRIPT_TIMEOUT)
    if result.status != OK:
        raise LabError(f"{vm}: {script}: {result.status}: {result.error}")
    return judge_script(script, result.exit_code, result.stdout, result.stderr)


def run_suite(lab: Path, vm: str, only: list[str], progress: Progress) -> dict[str, object]:
    """Every script of the lab kernel's suite (or `only`), in upstream's order, on one VM."""
    state = LabState.load(lab.resolve())
    if state is None:
        raise UsageError(f"no lab at {lab} (klpfleet lab up first)")
    machine = next((v for v in state.vms if v.name == vm), None)
    if machine is None:
        raise UsageError(f"no VM {vm!r} in the lab at {lab}")
    release = machine.release or state.release
    entry = ensure_upstream_suite(cache_dir(), release, progress)
    scripts = suite_scripts(entry / SUITE_DIR)
    unknown = [s for s in only if s not in scripts]
    if unknown:
        raise UsageError(f"{', '.join(unknown)}: not in {release}'s suite ({', '.join(scripts)})")
    outcomes = []
    for script in only or scripts:
        progress(f"{vm} ({release}): {script}")
        started = time.monotonic()
        outcome = run_on_vm(lab, vm, script)
        outcomes.append({**outcome.to_json(), "seconds": round(time.monotonic() - started, 1)})
    return {
        "vm": vm,
        "release": release,
        "source": (entry / "VERSION").read_text().strip(),
        "scripts": outcomes,
        "passed": sum(o["verdict"] == "pass" for o in outcomes),
        "failed": sum(o["verdict"] == "fail" for o in outcomes),
        "skipped": sum(o["verdict"] == "skip" for o in outcomes),
    }
