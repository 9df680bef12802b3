"""The kernel's own livepatch selftests, unchanged, against a simulated host.

Each script runs as on a real machine (`./test-NAME.sh` from the suite's directory, as root), in a mount
namespace of its own where the simulated kernel's files stand in for the real ones: the simulated /sys (its
livepatch and module directories, dynamic debug's control file), the /proc files the model answers and
/dev/kmsg, all served by `klpfleet.sim.kernelfs` over FUSE; and the tools that talk to a kernel (insmod, rmmod,
modprobe, modinfo, dmesg) are the simulator's, first on PATH. The scripts, functions.sh and their expected logs
are upstream's as Debian ships them; the test modules are the simulator's catalog of the same names.

What the simulator does not model is said per script, not hidden: a script that fails for a reason in
OUT_OF_SCOPE is reported as `out of scope` with that reason; every other failure is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from klpfleet.collection import module_util
from klpfleet.errors import KlpfleetError, UsageError
from klpfleet.sim import catalog
from klpfleet.sim.kernelfs import PROC_FILES
from klpfleet.sim.kerneltools import HOST_ENV
from klpfleet.sim.kselftest import SCRIPT_NAME, judge_script, suite_scripts
from klpfleet.sim.spec import write_ko

Progress = Callable[[str], None]
TOOLS = ("insmod", "rmmod", "modprobe", "modinfo", "dmesg")
SCRIPT_TIMEOUT = 900.0
MOUNT_WAIT = 15.0
# Simulated time runs this many times faster than the wall clock: transitions retry on each second of kernel
# time, the scripts poll every 0.1 s of wall time.
SPEED = 4.0

# Scripts whose subject the simulator does not model, and why.
OUT_OF_SCOPE = {
    "test-syscall.sh": "patches getpid while many processes call it and counts them through the module's own "
    "sysfs file; the simulator runs no user processes in its kernel",
    "test-kprobe.sh": "kprobes (tracefs' kprobe_events) are not modelled",
}
# Tests inside an otherwise modelled script that need what the simulator lacks (newer suites add them).
OUT_OF_SCOPE_TESTS = {
    "test-livepatch.sh": "its later tests (in 7.3's suite, not 6.12's) patch a module's function "
    "(test_klp_mod_target), which the simulator lacks",
    "test-ftrace.sh": "its later tests trace functions through tracefs, which is not modelled",
    "test-sysfs.sh": "its later tests read what the simulator does not model",
}

# Over the real paths, inside the script's own mount namespace: the simulated kernel's files.
BIND_AND_RUN = r"""
set -e
m="$1"; shift
mount --bind "$m/sys" /sys
for f in $PROC_FILES; do
    if [ -e "/proc/$f" ]; then mount --bind "$m/proc/$f" "/proc/$f"; fi
done
mount --bind "$m/dev/kmsg" /dev/kmsg
set +e
exec "$@"
"""


class SuiteError(KlpfleetError):
    """The runner itself could not work (no FUSE, no unshare): not a verdict on the simulator."""


def tool_wrapper(tool: str) -> str:
    return f'#!/bin/sh\nexec "{sys.executable}" -m klpfleet.sim.kerneltools {tool} "$@"\n'


def run_suite(suite: Path, release: str, only: list[str], progress: Progress) -> dict[str, object]:
    """Run the suite's scripts (or `only`) on a fresh simulated host of kernel `release`, one after another."""
    if not (suite / "functions.sh").exists() or not (suite / "Makefile").exists():
        raise UsageError(f"{suite}: not the kernel's livepatch selftests (no functions.sh and Makefile)")
    if os.geteuid() != 0:
        raise UsageError("running the selftests against the simulator needs root (a mount namespace and FUSE)")
    scripts = suite_scripts(suite)
    unknown = [s for s in only if s not in scripts]
    if unknown:
        raise UsageError(f"{', '.join(unknown)}: not in the suite ({', '.join(scripts)})")
    sim = module_util("_sim_kernel")
    with tempfile.TemporaryDirectory(prefix="klpfleet-upstream-") as tmp:
        work = Path(tmp)
        tests = work / "livepatch"
        shutil.copytree(suite, tests)
        new_layout = (tests / "test_modules").is_dir()
        modules = tests / "test_modules" if new_layout else work / "modules"
        for ko in modules.glob("*.ko") if new_layout else []:
            ko.unlink()  # a real kernel's build: the simulator loads its own modules of the same names
        for name in catalog.names():
            write_ko(catalog.catalog_spec(name, release), modules / f"{name}.ko")
        host = work / "host"

        def boot() -> None:  # each script starts on a freshly booted kernel, whatever the last one left
            debug = {"livepatch": False, "try_switch": False}
            sim.create_host(
                str(host), release, speed=SPEED, debug=debug, module_dir=None if new_layout else str(modules)
            )

        boot()
        bindir = work / "bin"
        bindir.mkdir()
        for tool in TOOLS:
            (bindir / tool).write_text(tool_wrapper(tool))
            (bindir / tool).chmod(0o755)
        mount = work / "mnt"
        mount.mkdir()
        with serving(host, mount):
            outcomes = []
            for script in only or scripts:
                boot()
                outcomes.append(_run_script(script, tests, work, bindir, host, mount, progress))
    return {
        "release": release,
        "backend": "sim",
        "scripts": outcomes,
        "passed": sum(o["verdict"] == "pass" for o in outcomes),
        "failed": sum(o["verdict"] == "fail" for o in outcomes),
        "skipped": sum(o["verdict"] == "skip" for o in outcomes),
        "out_of_scope": sum(o["verdict"] == "out of scope" for o in outcomes),
    }


def _run_script(
    script: str, tests: Path, work: Path, bindir: Path, host: Path, mount: Path, progress: Progress
) -> dict[str, object]:
    assert SCRIPT_NAME.fullmatch(script)
    progress(f"simulator: {script}")
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        "KDIR": str(work),  # upstream's knob: has_kdir() wants a module build directory
        "PROC_FILES": " ".join(PROC_FILES),
        HOST_ENV: str(host),
    }
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", BIND_AND_RUN, "sh", str(mount), f"./{script}"]
    if script in OUT_OF_SCOPE:  # not run: its subject is not modelled, and it would only wait for it
        return {
            **judge_script(script, None, "", "").to_json(),
            "verdict": "out of scope",
            "seconds": 0.0,
            "reason": OUT_OF_SCOPE[script],
            "detail": "",
        }
    started = time.monotonic()
    # Files, not pipes: what a script leaves running in the background must not hold the runner up.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.Popen(  # noqa: S603 - constant argv; the script name matched SCRIPT_NAME
                argv, cwd=tests, env=env, stdout=out, stderr=err, text=True, start_new_session=True
            )
        except FileNotFoundError:
            raise SuiteError("unshare is not installed (util-linux)") from None
        timed_out = False
        try:
            proc.wait(timeout=SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # the script's leftovers, a time-out or Ctrl-C: nothing of its outlives this call
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if timed_out:
        stderr += f"\ntimed out after {SCRIPT_TIMEOUT:g} s"
    outcome = judge_script(script, None if timed_out else proc.returncode, stdout, stderr)
    result = {**outcome.to_json(), "seconds": round(time.monotonic() - started, 1), "reason": ""}
    if outcome.verdict == "fail" and script in OUT_OF_SCOPE_TESTS:
        passed_some = any(ok for _, ok in outcome.tests)
        failed_any = any(not ok for _, ok in outcome.tests)
        if passed_some and not failed_any:
            # Every test it judged passed; it stopped at one that needs what is not modelled.
            result.update(verdict="partly out of scope", reason=OUT_OF_SCOPE_TESTS[script])
    return result


class serving:
    """The simulated kernel's files mounted at `mount` for the span of a `with`, then unmounted."""

    def __init__(self, host: Path, mount: Path) -> None:
        self.host, self.mount = host, mount
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> serving:
        argv = [sys.executable, "-m", "klpfleet.sim.kernelfs", str(self.host), str(self.mount)]
        log = self.mount.parent / "kernelfs.log"  # a file, never a pipe nobody reads while the scripts run
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        deadline = time.monotonic() + MOUNT_WAIT
        while not (self.mount / "dev" / "kmsg").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise SuiteError(f"could not mount the simulated kernel's files (FUSE): {last[0]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.mount)], capture_output=True, check=False)  # noqa: S603,S607
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
