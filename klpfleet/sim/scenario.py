"""`klpfleet sim run`: selftest-style scenarios on a fresh simulated host, printing the kernel log
filtered exactly as the kernel selftests filter it (tools/testing/selftests/livepatch/functions.sh).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klpfleet.collection import module_util
from klpfleet.errors import KlpfleetError, UsageError
from klpfleet.sim import catalog
from klpfleet.sim.spec import DEFAULT_KERNEL_RELEASE, write_ko

WAIT_LIMIT = 60.0  # the selftests' loop_until: 600 tries, 0.1 s apart
POLL = 0.1
TAINT_RE = re.compile(r"(tainting|taints) kernel")
STEPS = (
    "load_mod",
    "load_lp",
    "load_lp_nowait",
    "load_failing_mod",
    "set_pre_patch_ret",
    "disable_lp",
    "unload_lp",
    "unload_mod",
    "force_lp",
    "try_unload",
    "sleep",
)
TRY_UNLOAD_WAIT = 2.0  # a module whose reference was never dropped (a forced transition pinned it) stays at 1


class ScenarioFailed(KlpfleetError):
    pass


def selftest_filter(lines: list[str]) -> list[str]:
    return [
        line
        for line in lines
        if (line.startswith("% ") or "livepatch:" in line or "test_klp" in line) and not TAINT_RE.search(line)
    ]


@dataclass
class Step:
    action: str
    target: str
    params: str = ""
    value: Any = None


def parse_scenario(doc: Any) -> list[Step]:
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list) or not doc["steps"]:
        raise UsageError("scenario: needs a non-empty list under 'steps'")
    steps = []
    for i, raw in enumerate(doc["steps"]):
        if not isinstance(raw, dict):
            raise UsageError(f"scenario step {i + 1}: must be a mapping like {{load_mod: NAME}}")
        actions = [k for k in raw if k in STEPS]
        extra = set(raw) - set(STEPS) - {"params"}
        if len(actions) != 1 or extra:
            raise UsageError(f"scenario step {i + 1}: exactly one of {', '.join(STEPS)} (and optional params)")
        action = actions[0]
        arg = raw[action]
        params = raw.get("params", "")
        if not isinstance(params, str):
            raise UsageError(f"scenario step {i + 1}: params is the insmod argument string")
        if action == "set_pre_patch_ret":
            if not isinstance(arg, dict) or "module" not in arg or "value" not in arg:
                raise UsageError(f"scenario step {i + 1}: set_pre_patch_ret takes {{module: NAME, value: INT}}")
            value = arg["value"]
            if not isinstance(value, int) or isinstance(value, bool):
                raise UsageError(f"scenario step {i + 1}: set_pre_patch_ret value must be an integer")
            steps.append(Step(action, str(arg["module"]), value=value))
        elif action == "sleep":
            if not isinstance(arg, int | float) or isinstance(arg, bool) or not 0 <= arg <= 3600:
                raise UsageError(f"scenario step {i + 1}: sleep takes seconds, a number from 0 to 3600")
            steps.append(Step(action, "", value=float(arg)))
        else:
            if arg not in catalog.RAW:
                raise UsageError(
                    f"scenario step {i + 1}: unknown test module {arg!r}; known: {', '.join(catalog.names())}"
                )
            steps.append(Step(action, arg, params=params))
    return steps


def load_scenario(path: str | Path) -> list[Step]:
    from klpfleet.yamlfile import load_yaml

    return parse_scenario(load_yaml(path))


class Runner:
    """Drives one simulated host through the primitive layer, as functions.sh drives a real one."""

    def __init__(self, prims: Any, module_dir: str = "test_modules") -> None:
        self.p = prims
        self.module_dir = module_dir

    def log(self, text: str) -> None:
        self.p.log_write(text)

    def wait_for(self, predicate: Callable[[], bool], limit: float) -> bool:
        waited = 0.0
        while not predicate():
            if waited >= limit:
                return False
            self.p.sleep(POLL)
            waited += POLL
        return True

    def loop_until(self, predicate: Callable[[], bool], what: str) -> None:
        if not self.wait_for(predicate, WAIT_LIMIT):
            raise ScenarioFailed(what)

    def echo(self, step: Step, path: str, value: str) -> None:
        """`echo VALUE > PATH`, logged first as the selftests do; a refused write fails the step."""
        self.log(f"% echo {value} > {path}")
        try:
            self.p.write(path, value)
        except OSError as exc:
            raise ScenarioFailed(f"{step.action} {step.target}: {exc.strerror}") from None

    def read(self, path: str) -> str | None:
        try:
            return str(self.p.read(path)).strip()
        except OSError:
            return None

    def insmod(self, name: str, params: str) -> tuple[int, str]:
        path = f"{self.module_dir}/{name}.ko"
        self.log(f"% insmod {path}" + (f" {params}" if params else ""))
        rc, _, err = self.p.run(["insmod", path, *params.split()])
        return rc, err.strip()

    def run(self, step: Step) -> None:
        name = step.target
        if step.action in ("load_mod", "load_lp", "load_lp_nowait"):
            rc, err = self.insmod(name, step.params)
            if rc != 0:
                raise ScenarioFailed(f"{step.action} {name}: {err}")
            if step.action == "load_lp":
                self.loop_until(
                    lambda: self.read(f"/sys/kernel/livepatch/{name}/transition") == "0",
                    f"failed to complete transition of {name}",
                )
        elif step.action == "load_failing_mod":
            rc, err = self.insmod(name, step.params)
            if rc == 0:
                raise ScenarioFailed(f"load_failing_mod {name}: the module loaded")
            self.log(err)
        elif step.action == "set_pre_patch_ret":
            path = f"/sys/module/{name}/parameters/pre_patch_ret"
            self.log(f"% echo {step.value} > {path}")
            self.p.write(path, f"{step.value}\n")
        elif step.action == "disable_lp":
            self.echo(step, f"/sys/kernel/livepatch/{name}/enabled", "0")
            self.loop_until(
                lambda: not self.p.exists(f"/sys/kernel/livepatch/{name}"), f"failed to disable livepatch {name}"
            )
        elif step.action in ("unload_lp", "unload_mod"):
            self.loop_until(
                lambda: self.read(f"/sys/module/{name}/refcnt") == "0", f"module {name} refcnt never reached 0"
            )
            self.log(f"% rmmod {name}")
            rc, _, err = self.p.run(["rmmod", name])
            if rc != 0:
                raise ScenarioFailed(f"{step.action} {name}: {err.strip()}")
        elif step.action == "force_lp":
            self.echo(step, f"/sys/kernel/livepatch/{name}/force", "1")
            self.loop_until(
                lambda: self.read(f"/sys/kernel/livepatch/{name}/transition") in ("0", None),
                f"failed to complete the forced transition of {name}",
            )
        elif step.action == "try_unload":
            # rmmod whatever the reference count says, logging the tool's answer: what each kernel pins differs.
            self.wait_for(lambda: self.read(f"/sys/module/{name}/refcnt") == "0", TRY_UNLOAD_WAIT)
            self.log(f"% rmmod {name}")
            rc, _, err = self.p.run(["rmmod", name])
            if rc != 0:
                self.log(err.strip())
        elif step.action == "sleep":
            self.p.sleep(step.value)


def run_scenario(steps: list[Step], kernel_release: str = DEFAULT_KERNEL_RELEASE) -> list[str]:
    """Run on a fresh simulated host; return the selftest-filtered kernel log."""
    sim = module_util("_sim_kernel")

    with tempfile.TemporaryDirectory(prefix="klpfleet-scenario-") as tmp:
        root = Path(tmp)
        for name in {s.target for s in steps if s.target in catalog.RAW}:
            write_ko(catalog.catalog_spec(name, kernel_release), root / "test_modules" / f"{name}.ko")
        sim.create_host(str(root / "host"), kernel_release, speed=0.0, debug={"livepatch": True, "try_switch": False})
        prims = sim.SimPrimitives(str(root / "host"), cwd=str(root))
        _, start = prims.read_log(-1)
        runner = Runner(prims)
        try:
            for step in steps:
                runner.run(step)
        finally:
            records, _ = prims.read_log(start)
            runner_log = selftest_filter([text for _, _, text in records])
        return runner_log
