"""The real-kernel lab from the tests: one lab of 3 VMs per kernel (KLPFLEET_TEST_KERNELS, default every
suite the lab knows: Debian 11, 12 and 13), or the one named by KLPFLEET_TEST_LAB (kept running afterwards);
shell access to a VM for checks independent of klpfleet, and a reset between tests so each starts from an
unpatched kernel."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from klpfleet.db.engine import open_database
from klpfleet.db.migrate import upgrade
from klpfleet.lab.selftest import vm_target
from klpfleet.probe.ssh import OK, run_remote
from klpfleet.registry.patches import add_patch

from .conftest import run_klpfleet

LAB_VMS = 3
LAB_UP_TIMEOUT = 45 * 60  # a cold cache fetches a kernel, builds modules and debootstraps
LAB_TEST_TIMEOUT = 15 * 60  # the slowest lab test, with its VM reboots, takes a few minutes
DEFAULT_KERNELS = "bullseye,bookworm,trixie,trixie-backports"


def lab_kernels() -> list[str]:
    """The kernels the lab tier runs on: KLPFLEET_TEST_KERNELS, or the running lab's (KLPFLEET_TEST_LAB)."""
    if os.environ.get("KLPFLEET_TEST_LAB"):
        return ["given"]
    return [k for k in os.environ.get("KLPFLEET_TEST_KERNELS", DEFAULT_KERNELS).split(",") if k]


# Disable every patch top of the stack first (pre-5.1 kernels refuse others), then unload every test module.
RESET_SCRIPT = r"""
echo N > /sys/module/test_klp_callbacks_busy/parameters/block_transition 2>/dev/null
for round in 1 2 3 4 5; do
    for p in $(ls -r /sys/kernel/livepatch 2>/dev/null); do
        [ "$(cat /sys/kernel/livepatch/$p/enabled)" = 1 ] && echo 0 > /sys/kernel/livepatch/$p/enabled 2>/dev/null
    done
    tries=0
    while [ -n "$(ls /sys/kernel/livepatch)" ] && [ $tries -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
    [ -z "$(ls /sys/kernel/livepatch)" ] && break
done
for round in 1 2 3; do
    for m in $(awk '/^test_klp_/ {print $1}' /proc/modules); do rmmod $m 2>/dev/null; done
done
rm -rf /var/lib/klpfleet
[ -e /dev/kmsg ] || mknod -m 644 /dev/kmsg c 1 11
ls /sys/kernel/livepatch; awk '/^test_klp_/ {print $1}' /proc/modules
"""


@dataclass
class Lab:
    directory: Path
    info: dict[str, Any]

    @property
    def inventory(self) -> Path:
        return self.directory / "inventory.yml"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def names(self) -> list[str]:
        return [vm["name"] for vm in self.info["vms"]]

    def module(self, name: str) -> Path:
        return Path(self.info["test_modules"]) / f"{name}.ko"

    def sh(self, vm: str, script: str, timeout: float = 120) -> str:
        """Run a constant shell script of the test's on a VM (on stdin); return stdout, fail on error."""
        target, known = vm_target(self.directory, vm)
        result = run_remote(target, ["sh", "-s"], script, known, 10, timeout)
        assert result.status == OK, f"{vm}: {result.status} {result.error}"
        assert result.exit_code == 0, f"{vm}: exit {result.exit_code}: {result.stderr}"
        return result.stdout

    @property
    def release(self) -> str:
        return str(self.info["release"])

    @property
    def version(self) -> tuple[int, int]:
        major, minor = self.release.split("-")[0].split(".")[:2]
        return int(major), int(minor)

    def reset(self) -> None:
        with ThreadPoolExecutor(len(self.names)) as pool:  # before every lab test: the VMs in parallel
            found = pool.map(lambda vm: self.sh(vm, RESET_SCRIPT).split(), self.names)
            leftovers = dict(zip(self.names, found, strict=True))
        for vm, leftover in leftovers.items():
            if leftover:  # a module a forced transition pinned stays until reboot: boot this VM afresh
                self.reboot(vm)

    def reboot(self, vm: str) -> None:
        proc = run_klpfleet("lab", "reboot", "--dir", str(self.directory), vm, "-o", "json", timeout=300)
        assert proc.returncode == 0, proc.stderr
        self.info = json.loads(proc.stdout)["data"]
        leftover = self.sh(vm, RESET_SCRIPT).split()
        assert leftover == [], f"{vm} could not be reset: {leftover}"


def start_lab(tmp_factory: Any, kernel: str) -> tuple[Lab, bool]:
    """(lab, owned): owned labs are stopped at the end of the session."""
    given = os.environ.get("KLPFLEET_TEST_LAB")
    directory = Path(given) if given else tmp_factory.mktemp(f"lab-{kernel}")
    args = ["--kernel", kernel] if not given else []
    proc = run_klpfleet(
        "lab", "up", "--dir", str(directory), "--vms", str(LAB_VMS), *args, "-o", "json", timeout=LAB_UP_TIMEOUT
    )
    if proc.returncode != 0:
        pytest.fail(f"klpfleet lab up failed: {proc.stderr.strip()}", pytrace=False)
    return Lab(directory, json.loads(proc.stdout)["data"]), not given


def stop_lab(lab: Lab) -> None:
    proc = run_klpfleet("lab", "down", "--dir", str(lab.directory))
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(lab.directory, ignore_errors=True)


def _lab_kernel(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("lab") if callspec is not None else None


@pytest.hookimpl(trylast=True)  # after pytest has grouped the items by lab kernel
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The lab's tests run last, and bounded: the last kernel's VMs then never run beside the other tests, and a
    lab that hangs fails its test (a first lab test on a cold cache waits for `lab up`) instead of the run.
    Tests marked `any_kernel` prove klpfleet's own paths (transport, a host's files), not the kernel's behaviour:
    they run on the first lab kernel only."""
    first = lab_kernels()[0] if lab_kernels() else None
    other_kernels = [i for i in items if i.get_closest_marker("any_kernel") and _lab_kernel(i) not in (None, first)]
    if other_kernels:
        config.hook.pytest_deselected(items=other_kernels)
        items[:] = [i for i in items if i not in other_kernels]
    items.sort(key=lambda item: _lab_kernel(item) is not None)
    for item in items:
        if _lab_kernel(item) is not None:
            item.add_marker(pytest.mark.timeout(LAB_UP_TIMEOUT + LAB_TEST_TIMEOUT))


# Session-scoped: the tests of every lab module share one lab per kernel (pytest groups them by kernel and stops
# one kernel's lab before it starts the next).
@pytest.fixture(scope="session", params=lab_kernels())
def lab(request, tmp_path_factory):
    lab, owned = start_lab(tmp_path_factory, request.param)
    yield lab
    if owned:
        stop_lab(lab)


@pytest.fixture
def clean_lab(lab) -> Lab:
    lab.reset()
    return lab


LIVEPATCHES = ("test_klp_livepatch", "test_klp_atomic_replace", "test_klp_callbacks_demo")


@pytest.fixture
def lab_db(clean_lab, tmp_path):
    """A database of the test's own holding the lab's VMs and the livepatches the tests apply (registered
    through pyelftools like any vendor artifact)."""
    url = f"sqlite:///{tmp_path / 'klpfleet.db'}"
    db = open_database(url, create=True)  # in this process: before each of a hundred lab tests, a process each
    upgrade(db)  # would cost seconds
    # ansible-core reads its configuration once per process: the import runs in its own, as operators run it.
    proc = run_klpfleet("--db", url, "inventory", "import", "-i", str(clean_lab.inventory))
    assert proc.returncode == 0, proc.stderr
    with db.session.begin() as s:
        for name in LIVEPATCHES:
            add_patch(s, clean_lab.module(name))
    return url
