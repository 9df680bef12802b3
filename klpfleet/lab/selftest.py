"""Selftest-style scenarios on a lab VM: the same steps `klpfleet sim run` gives the simulator, run on a
real kernel by a functions.sh-like script, and the kernel log filtered the same way. Any difference
between the two texts is a simulator bug."""

from __future__ import annotations

from pathlib import Path

from klpfleet.errors import UsageError
from klpfleet.lab.vms import LabState
from klpfleet.probe.ssh import OK, KnownHosts, Target, run_remote
from klpfleet.sim.scenario import ScenarioFailed, Step, selftest_filter

STEPS_SCRIPT = ["sh", "/root/lab/run-steps.sh"]
STEP_TIMEOUT = 600.0


def step_line(step: Step) -> str:
    """One stdin line for run-steps.sh: ACTION TARGET [PARAMS]."""
    if step.action == "set_pre_patch_ret":
        return f"{step.action} {step.target} {step.value}\n"
    if step.action == "sleep":
        return f"sleep {step.value}\n"
    return f"{step.action} {step.target} {step.params}".rstrip() + "\n"


def vm_target(lab: Path, name: str) -> tuple[Target, KnownHosts]:
    """How to reach a lab VM: root with the lab's key, its host key from the lab's known_hosts only."""
    state = LabState.load(lab)
    vm = next((v for v in (state.vms if state else []) if v.name == name), None)
    if vm is None:
        raise UsageError(f"no VM {name!r} in the lab at {lab} (klpfleet lab up first)")
    target = Target(name=vm.name, address="127.0.0.1", port=vm.port, user="root", key_file=str(lab / "id_ed25519"))
    return target, KnownHosts(lab / "known_hosts", accept_new=False)


def run_on_vm(lab: Path, name: str, steps: list[Step]) -> list[str]:
    """Run the steps on the VM; return its selftest-filtered kernel log."""
    target, known = vm_target(lab.resolve(), name)
    stdin = "".join(step_line(s) for s in steps)
    result = run_remote(target, STEPS_SCRIPT, stdin, known, 10.0, STEP_TIMEOUT)
    if result.status != OK:
        raise ScenarioFailed(f"{name}: {result.status}: {result.error}")
    if result.exit_code != 0:
        raise ScenarioFailed(f"{name}: {result.stderr.strip() or 'run-steps.sh failed'}")
    return selftest_filter(result.stdout.splitlines())
