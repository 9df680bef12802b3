"""Every host operation on real Linux kernels: Debian 11, 12 and 13's kernels (5.10, 6.1, 6.12) in QEMU VMs
(klpfleet lab), reached over SSH by the real playbooks, the controller and the probe. Every test runs on
each kernel (KLPFLEET_TEST_KERNELS narrows the list). Checks of what the kernel did are made on the VM
itself (sysfs, /proc), independently of klpfleet's own reading.

Set KLPFLEET_TEST_LAB=DIR to reuse (and keep) a running lab while developing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from klpfleet.db.engine import open_database
from klpfleet.db.models import Event, Host, HostPatch, Patch
from klpfleet.lab.selftest import run_on_vm
from klpfleet.sim.scenario import load_scenario, run_scenario

from .ansiblehelpers import BIN, ROOT, ansible_env, playbook
from .conftest import run_klpfleet
from .labhelpers import Lab

pytestmark = pytest.mark.lab

SCENARIOS = sorted(
    [
        *Path(__file__).parent.joinpath("scenarios").glob("*.yml"),
        *Path(__file__).parent.joinpath("lab", "scenarios").glob("*.yml"),
    ]
)
PATCHED_CMDLINE = "test_klp_livepatch: this has been live patched\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def apply(lab: Lab, url: str, module: str | Path, *extra: str, limit: str = "lab1"):
    """apply.yml with a test module by name, or any .ko by path."""
    ko = module if isinstance(module, Path) else lab.module(module)
    return playbook(
        lab.inventory,
        ROOT / "playbooks" / "apply.yml",
        "-e",
        f"klp_patch_src={ko}",
        "-e",
        f"klp_patch_sha256={sha256(ko)}",
        "--limit",
        limit,
        *extra,
        db_url=url,
    )


def remove(lab: Lab, url: str, name: str, limit: str = "lab1"):
    return playbook(
        lab.inventory, ROOT / "playbooks" / "remove.yml", "-e", f"klp_patch_name={name}", "--limit", limit, db_url=url
    )


def state(url: str, host: str, patch: str) -> tuple[str, str | None, bool | None]:
    db = open_database(url)
    with db.session() as s:
        row = s.execute(
            select(HostPatch.state, HostPatch.error_code, HostPatch.host_clean)
            .join(Host, Host.id == HostPatch.host_id)
            .join(Patch, Patch.id == HostPatch.patch_id)
            .where(Host.name == host, Patch.name == patch)
        ).one()
    return row[0], row[1], row[2]


def last_event(url: str, host: str | None, kind: str, patch: str | None = None) -> Event:
    db = open_database(url)
    with db.session() as s:
        query = select(Event).where(Event.kind == kind)
        if host is not None:
            query = query.where(Event.host_name == host)
        if patch is not None:
            query = query.where(Event.patch_name == patch)
        event = s.scalars(query.order_by(Event.id.desc())).first()
        assert event is not None, f"no {kind} event for {host}"
        s.expunge(event)
        return event


def livepatches(lab: Lab, vm: str) -> list[str]:
    return lab.sh(vm, "ls /sys/kernel/livepatch").split()


def modules(lab: Lab, vm: str) -> list[str]:
    return lab.sh(vm, "awk '/^test_klp_/ {print $1}' /proc/modules").split()


def recap(proc, host: str) -> str:
    return next(line for line in proc.stdout.splitlines() if line.startswith(host + " ") and "ok=" in line)


# ------------------------------------------------------------------------------- the simulator's fidelity


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.stem for s in SCENARIOS])
def test_the_simulator_prints_what_the_kernel_prints(clean_lab, scenario):
    steps = load_scenario(scenario)
    real = run_on_vm(clean_lab.directory, "lab1", steps)
    assert real[0].startswith("% insmod test_modules/"), real[:3]
    assert run_scenario(steps, kernel_release=clean_lab.info["release"]) == real
    expected = scenario.with_suffix(".out")
    if expected.exists():  # the selftests' own expected text (tests/scenarios/*.out)
        assert "\n".join(real) + "\n" == expected.read_text()


# ------------------------------------------------------------------------------- the collection over SSH


def test_apply_is_idempotent_and_remove_restores_the_function(clean_lab, lab_db):
    lab = clean_lab
    original = lab.sh("lab1", "cat /proc/cmdline")
    assert original != PATCHED_CMDLINE

    proc = apply(lab, lab_db, "test_klp_livepatch")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "changed=0" not in recap(proc, "lab1")
    assert lab.sh("lab1", "cat /proc/cmdline") == PATCHED_CMDLINE
    assert (
        lab.sh(
            "lab1",
            "cat /sys/kernel/livepatch/test_klp_livepatch/enabled /sys/kernel/livepatch/test_klp_livepatch/transition",
        )
        == "1\n0\n"
    )
    assert lab.sh("lab2", "cat /proc/cmdline") != PATCHED_CMDLINE  # --limit held
    assert state(lab_db, "lab1", "test_klp_livepatch")[0] == "applied"

    again = apply(lab, lab_db, "test_klp_livepatch")
    assert again.returncode == 0 and "changed=0" in recap(again, "lab1"), again.stdout[-3000:]

    proc = remove(lab, lab_db, "test_klp_livepatch")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert lab.sh("lab1", "cat /proc/cmdline") == original
    assert livepatches(lab, "lab1") == [] and modules(lab, "lab1") == []
    assert state(lab_db, "lab1", "test_klp_livepatch")[0] == "absent"


def test_a_pre_patch_refusal_is_reported_and_leaves_the_host_clean(clean_lab, lab_db):
    lab = clean_lab
    proc = apply(lab, lab_db, "test_klp_callbacks_demo", "-e", json.dumps({"klp_patch_params": {"pre_patch_ret": -19}}))
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert state(lab_db, "lab1", "test_klp_callbacks_demo") == ("refused", "refused", True)
    details = last_event(lab_db, "lab1", "patch.state").details
    assert (details["refused_object"], details["errno"]) == ("vmlinux", 19)  # ENODEV
    assert livepatches(lab, "lab1") == [] and modules(lab, "lab1") == []


def test_a_patch_whose_system_state_is_incompatible_is_refused_and_the_host_kept(clean_lab, lab_db):
    """test-state.sh "incompatible cumulative livepatches", through the patch module: the kernel refuses a patch
    that would downgrade a system state another installed patch set up (EINVAL)."""
    lab = clean_lab
    for name in ("test_klp_state", "test_klp_state2"):
        assert run_klpfleet("--db", lab_db, "patch", "add", str(lab.module(name))).returncode == 0
    assert apply(lab, lab_db, "test_klp_state2").returncode == 0
    proc = apply(lab, lab_db, "test_klp_state")  # state 1 version 1, below the installed version 2
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert state(lab_db, "lab1", "test_klp_state")[1:] == ("incompatible_state", True)
    assert last_event(lab_db, "lab1", "patch.state", "test_klp_state").details["errno"] == 22  # EINVAL
    assert livepatches(lab, "lab1") == ["test_klp_state2"]
    assert "test_klp_state) is not compatible with the already installed livepatches" in lab.sh("lab1", "dmesg")
    assert remove(lab, lab_db, "test_klp_state2").returncode == 0


def test_a_target_module_refused_later_is_found_by_patch_info(clean_lab, lab_db):
    lab = clean_lab
    assert apply(lab, lab_db, "test_klp_callbacks_demo").returncode == 0
    # Days later someone loads the patch's target module, and the patch's pre_patch callback refuses it.
    lab.sh(
        "lab1",
        "echo -19 > /sys/module/test_klp_callbacks_demo/parameters/pre_patch_ret\n"
        "if insmod /root/test_modules/test_klp_callbacks_mod.ko; then exit 1; fi\n",
    )
    proc = playbook(lab.inventory, ROOT / "playbooks" / "gather.yml", "--limit", "lab1", db_url=lab_db)
    assert proc.returncode == 0, proc.stdout[-3000:]
    refusal = last_event(lab_db, "lab1", "module.load_refused")
    assert refusal.patch_name == "test_klp_callbacks_demo"
    assert refusal.details["module"] == "test_klp_callbacks_mod"
    assert state(lab_db, "lab1", "test_klp_callbacks_demo")[0] == "applied"  # the patch itself is fine


def test_a_stalled_transition_is_reversed_with_the_stalled_task_reported(clean_lab, lab_db):
    lab = clean_lab
    lab.sh("lab1", "insmod /root/test_modules/test_klp_callbacks_busy.ko block_transition=Y")
    proc = apply(lab, lab_db, "test_klp_callbacks_demo", "-e", "klp_transition_timeout=5")
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert state(lab_db, "lab1", "test_klp_callbacks_demo") == ("stalled", "transition_stalled", True)
    tasks = last_event(lab_db, "lab1", "patch.state").details["stalled_tasks"]
    assert any(any("busymod_work_func" in frame for frame in task["stack"]) for task in tasks), tasks
    assert livepatches(lab, "lab1") == []
    assert modules(lab, "lab1") == ["test_klp_callbacks_busy"]  # the patch module is gone, the busy one stays


def test_an_atomic_replace_supersedes_the_patch_below(clean_lab, lab_db):
    lab = clean_lab
    assert apply(lab, lab_db, "test_klp_livepatch").returncode == 0
    proc = apply(lab, lab_db, "test_klp_atomic_replace", "-e", json.dumps({"klp_patch_params": {"replace": 1}}))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert lab.sh("lab1", "cat /proc/meminfo") == "test_klp_atomic_replace: this has been live patched\n"
    assert lab.sh("lab1", "cat /proc/cmdline") != PATCHED_CMDLINE  # the replaced patch no longer acts
    assert livepatches(lab, "lab1") == ["test_klp_atomic_replace"]
    proc = playbook(lab.inventory, ROOT / "playbooks" / "gather.yml", "--limit", "lab1", db_url=lab_db)
    assert proc.returncode == 0
    assert state(lab_db, "lab1", "test_klp_atomic_replace")[0] == "applied"
    assert state(lab_db, "lab1", "test_klp_livepatch")[0] != "applied"


# ------------------------------------------------------------------------------- kernel generations
# What changed between 5.10, 6.1 and 6.12 (docs/kernel.md, "Kernel generations"), each checked on the VM itself.

STALL = "insmod /root/test_modules/test_klp_callbacks_busy.ko block_transition=Y"
FORCE = ("-e", "klp_transition_timeout=3", "-e", "klp_on_stall=force", "-e", "klp_allow_force=true")


def pins_all(lab: Lab) -> bool:
    """5.10 pins every patch present at a force; 6.1 and 6.12 only what is unsafe to unload (both seen)."""
    return lab.version < (6, 0)


def refcnt(lab: Lab, vm: str, module: str) -> int:
    return int(lab.sh(vm, f"cat /sys/module/{module}/refcnt"))


def test_force_then_remove_pins_what_this_kernel_pins(clean_lab, lab_db):
    lab = clean_lab
    assert apply(lab, lab_db, "test_klp_livepatch").returncode == 0
    lab.sh("lab1", STALL)
    proc = apply(lab, lab_db, "test_klp_callbacks_demo", *FORCE)
    assert proc.returncode == 0, proc.stdout[-3000:]
    forced = last_event(lab_db, "lab1", "patch.state", "test_klp_callbacks_demo")
    expected = ["test_klp_callbacks_demo", "test_klp_livepatch"] if pins_all(lab) else []
    assert sorted(forced.details.get("pinned") or []) == expected, forced.details
    assert state(lab_db, "lab1", "test_klp_callbacks_demo")[0] == ("forced" if pins_all(lab) else "applied")
    lab.sh("lab1", "echo N > /sys/module/test_klp_callbacks_busy/parameters/block_transition")
    for name in ("test_klp_callbacks_demo", "test_klp_livepatch"):
        proc = remove(lab, lab_db, name)
        assert proc.returncode == 0, proc.stdout[-3000:]  # disabled either way: its code is out
        assert state(lab_db, "lab1", name)[0] == ("pinned" if pins_all(lab) else "absent")
    assert livepatches(lab, "lab1") == []
    assert lab.sh("lab1", "cat /proc/cmdline") != PATCHED_CMDLINE
    left = [m for m in modules(lab, "lab1") if m != "test_klp_callbacks_busy"]
    if pins_all(lab):  # the kernel's own word: the references were never dropped
        assert sorted(left) == ["test_klp_callbacks_demo", "test_klp_livepatch"]
        assert refcnt(lab, "lab1", "test_klp_livepatch") == 1
        assert "in use" in lab.sh("lab1", "rmmod test_klp_livepatch 2>&1 || true")
    else:
        assert left == []


def test_forcing_a_replace_patch_pins_the_patch_it_replaced(clean_lab, lab_db):
    lab = clean_lab
    assert apply(lab, lab_db, "test_klp_livepatch").returncode == 0
    lab.sh("lab1", STALL)
    proc = apply(lab, lab_db, "test_klp_callbacks_demo", *FORCE, "-e", json.dumps({"klp_patch_params": {"replace": 1}}))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert livepatches(lab, "lab1") == ["test_klp_callbacks_demo"]  # the replaced patch was freed...
    assert refcnt(lab, "lab1", "test_klp_livepatch") == 1  # ...but its module reference was never dropped
    forced = last_event(lab_db, "lab1", "patch.state", "test_klp_callbacks_demo")
    assert "test_klp_livepatch" in forced.details["pinned"], forced.details
    replaced = last_event(lab_db, "lab1", "patch.state", "test_klp_livepatch")
    assert replaced.details["replaced_by"] == "test_klp_callbacks_demo"
    assert ("test_klp_callbacks_demo" in forced.details["pinned"]) is pins_all(lab)
    gathered = playbook(lab.inventory, ROOT / "playbooks" / "gather.yml", "--limit", "lab1", db_url=lab_db)
    assert gathered.returncode == 0
    assert state(lab_db, "lab1", "test_klp_livepatch")[0] == "pinned"
    proc = remove(lab, lab_db, "test_klp_livepatch")
    assert proc.returncode == 0 and "changed=0" in recap(proc, "lab1"), proc.stdout[-3000:]
    lab.sh("lab1", "echo N > /sys/module/test_klp_callbacks_busy/parameters/block_transition")
    assert remove(lab, lab_db, "test_klp_callbacks_demo").returncode == 0
    gone = "test_klp_callbacks_demo" not in modules(lab, "lab1")
    assert gone is not pins_all(lab)


def test_stack_order_survives_a_kernel_log_that_wrapped(clean_lab, lab_db):
    lab = clean_lab
    # Loaded in the reverse of name order: a guess from names, or from a wrapped log, gets it wrong.
    assert apply(lab, lab_db, "test_klp_livepatch").returncode == 0
    assert apply(lab, lab_db, "test_klp_atomic_replace").returncode == 0
    filler = "klpfleet-lab filler line ...................................................."
    lab.sh("lab1", f'i=0; while [ $i -lt 6000 ]; do echo "{filler} $i" > /dev/kmsg; i=$((i+1)); done')
    assert "enabling patch" not in lab.sh("lab1", "dmesg")  # the ring buffer no longer holds the loads
    proc = playbook(lab.inventory, ROOT / "playbooks" / "gather.yml", "--limit", "lab1", db_url=lab_db)
    assert proc.returncode == 0
    db = open_database(lab_db)
    with db.session() as s:
        orders = dict(
            s.execute(
                select(Patch.name, HostPatch.stack_order)
                .join(HostPatch, HostPatch.patch_id == Patch.id)
                .join(Host, Host.id == HostPatch.host_id)
                .where(Host.name == "lab1")
            ).all()
        )
    assert orders["test_klp_livepatch"] < orders["test_klp_atomic_replace"], orders

    # Which source said so: the kernel's own stack_order where it has one (6.13+), read by an ad-hoc run.
    adhoc = subprocess.run(
        [str(BIN / "ansible"), "-i", str(lab.inventory), "lab1", "-m", "klpfleet.livepatch.patch_info", "-o"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ansible_env(),
        timeout=120,
        check=False,
    )
    assert adhoc.returncode == 0, adhoc.stdout[-2000:]
    info = json.loads(adhoc.stdout.split("=>", 1)[1])
    has_sysfs_order = lab.version >= (6, 13)
    assert info["stack_order_source"] == ("sysfs" if has_sysfs_order else "module_load_order")
    if has_sysfs_order:
        kernel_says = lab.sh("lab1", "cd /sys/kernel/livepatch && for p in *; do echo $p $(cat $p/stack_order); done")
        assert {p["name"]: p["stack_order"] for p in info["patches"]} == {
            name: int(order) for name, order in (line.split() for line in kernel_says.splitlines())
        }


@pytest.mark.any_kernel  # klpfleet's build check, not the kernel
def test_a_rebuilt_patch_under_the_same_name_is_reported_not_skipped(clean_lab, lab_db):
    lab = clean_lab
    assert apply(lab, lab_db, "test_klp_livepatch").returncode == 0
    rebuilt = Path(lab.info["test_modules"]) / "rebuilt" / "test_klp_livepatch.ko"
    proc = apply(lab, lab_db, rebuilt)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "different_build" in proc.stdout
    assert lab.sh("lab1", "cat /proc/cmdline") == PATCHED_CMDLINE  # the old build still runs, and it says so


@pytest.mark.any_kernel  # klpfleet's reading of a missing log, not the kernel
def test_an_unreadable_kernel_log_is_said_not_guessed(clean_lab, lab_db):
    lab = clean_lab
    lab.sh("lab1", "rm /dev/kmsg")  # as in a container without /dev/kmsg
    proc = apply(lab, lab_db, "test_klp_callbacks_demo", "-e", json.dumps({"klp_patch_params": {"pre_patch_ret": -19}}))
    assert proc.returncode == 2
    assert state(lab_db, "lab1", "test_klp_callbacks_demo")[:2] == ("failed", "insmod_failed")
    details = last_event(lab_db, "lab1", "patch.state").details
    assert details["errno"] == 19
    assert "kernel log could not be read" in proc.stderr  # Ansible's [WARNING] line
    assert any("refusal looks like any other failure" in w for w in details["warnings"])
    assert details["kernel_log_unreadable"].startswith("/dev/kmsg")
    assert livepatches(lab, "lab1") == []
