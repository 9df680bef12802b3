"""The controller, the probe and reboots on real kernels: rollouts over the lab's VMs (locally and through an
execution node), kept patches across reboots, the probe over real SSH, a connection dropped mid-transition. Every
test runs on each lab kernel (KLPFLEET_TEST_KERNELS narrows the list); the lab is shared with tests/test_lab.py."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from klpfleet.db.engine import open_database
from klpfleet.db.models import AnsibleRun

from .ansiblehelpers import ROOT, playbook
from .conftest import run_klpfleet
from .labhelpers import Lab
from .test_lab import apply, last_event, livepatches, modules, recap, remove, state

pytestmark = pytest.mark.lab

SCENARIOS = sorted(
    [
        *Path(__file__).parent.joinpath("scenarios").glob("*.yml"),
        *Path(__file__).parent.joinpath("lab", "scenarios").glob("*.yml"),
    ]
)
PATCHED_CMDLINE = "test_klp_livepatch: this has been live patched\n"


# ------------------------------------------------------------------------------- controller and probe


@pytest.mark.any_kernel  # the controller and the boot manifest, not the kernel
def test_a_rollout_over_three_vms_with_one_refusing_then_a_rollback(clean_lab, tmp_path, lab_db):
    lab = clean_lab
    # lab3 refuses: its pre_patch callback returns -ENODEV there (a host var, as a vendor patch might check).
    inventory = yaml.safe_load(lab.inventory.read_text())
    inventory["all"]["children"]["lab"]["hosts"]["lab3"]["klp_patch_params"] = {"pre_patch_ret": -19}
    # Through become (su, from root to root: the VMs have no sudo), as operators who log in unprivileged run it.
    for vm in inventory["all"]["children"]["lab"]["hosts"].values():
        vm.update(klp_become=True, ansible_become_method="su")
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    env = {"KLPFLEET_RUN_DIR": str(tmp_path / "runs")}

    def klp(*args: str, timeout: float = 600):
        return run_klpfleet("--db", lab_db, *args, env=env, timeout=timeout)

    assert klp("inventory", "import", "-i", str(tmp_path / "inventory.yml")).returncode == 0
    gathered = playbook(tmp_path / "inventory.yml", ROOT / "playbooks" / "gather.yml", db_url=lab_db)
    assert gathered.returncode == 0, gathered.stdout[-3000:]
    # Each wave is gated on its transition times as the real kernel made them (the module's own measurement).
    policy = {"waves": [1, "100%"], "analysis": [{"name": "transition-p95", "transition": "p95", "condition": "< 30"}]}
    (tmp_path / "rollout.yml").write_text(yaml.safe_dump(policy))
    created = klp(
        "rollout", "create", "test_klp_callbacks_demo", "--policy", str(tmp_path / "rollout.yml"), "-o", "json"
    )
    assert created.returncode == 0, created.stderr
    rid = str(json.loads(created.stdout)["data"]["id"])
    started = klp("rollout", "start", rid, "--wait")
    assert started.returncode == 0, started.stderr
    # The default engine here is Mitogen (klpfleet[fast] is installed): over SSH, with become, on this kernel.
    assert last_event(lab_db, None, "rollout.started").details["engine"] == "mitogen"
    waves = json.loads(klp("rollout", "status", rid, "-o", "json").stdout)["data"]["waves"]
    for wave in waves:  # lab3 refused: the second wave's figures are lab2's alone
        assert wave["transition"]["hosts"] == 1 and 0 <= wave["transition"]["max"] < 30, wave["transition"]
        assert wave["analysis"]["result"] == "passed"
        assert wave["analysis"]["checks"]["transition-p95"]["value"] == pytest.approx(
            wave["transition"]["p95"], abs=1e-3
        )
    for vm, expected in (("lab1", "applied"), ("lab2", "applied"), ("lab3", "refused")):
        assert state(lab_db, vm, "test_klp_callbacks_demo")[0] == expected, vm
    assert livepatches(lab, "lab1") == livepatches(lab, "lab2") == ["test_klp_callbacks_demo"]
    assert livepatches(lab, "lab3") == [] and modules(lab, "lab3") == []

    back = klp("rollback", "test_klp_callbacks_demo", "--fast")
    assert back.returncode == 0, back.stderr
    for vm in lab.names:
        assert livepatches(lab, vm) == [] and modules(lab, vm) == [], vm
    assert state(lab_db, "lab1", "test_klp_callbacks_demo")[0] == "absent"


@pytest.mark.any_kernel  # transport and host files, not the kernel
def test_a_rollout_through_an_execution_node_drives_the_real_kernels(clean_lab, tmp_path, lab_db, node_lab):
    """The node (root behind a loopback sshd, with only ansible-core and ansible-runner in its virtualenv)
    reaches the VMs over SSH; the controller only streams the job and records what comes back."""
    lab = clean_lab
    env = {"KLPFLEET_RUN_DIR": str(tmp_path / "runs")}

    def klp(*args: str, timeout: float = 600):
        return run_klpfleet("--db", lab_db, *args, env=env, timeout=timeout)

    node = node_lab.add_args("klpnode1")
    node[1] = node[1].replace("klpnode1@", "root@")  # root on the node: it reads the lab's SSH key
    added = klp("node", "add", "lab-node", *node)
    assert added.returncode == 0, added.stdout + added.stderr
    gathered = playbook(lab.inventory, ROOT / "playbooks" / "gather.yml", db_url=lab_db)
    assert gathered.returncode == 0, gathered.stdout[-3000:]
    created = klp("rollout", "create", "test_klp_livepatch", "--waves", "1,100%", "-o", "json")
    assert created.returncode == 0, created.stderr
    rid = str(json.loads(created.stdout)["data"]["id"])
    started = klp("rollout", "start", rid, "--wait")
    assert started.returncode == 0, started.stderr
    assert "execution nodes" in last_event(lab_db, None, "rollout.started").details["engine_reason"]
    for vm in lab.names:
        assert state(lab_db, vm, "test_klp_livepatch")[0] == "applied", vm
        assert livepatches(lab, vm) == ["test_klp_livepatch"], vm
        assert lab.sh(vm, "cat /proc/cmdline") == PATCHED_CMDLINE
    with open_database(lab_db).session() as s:
        idents = list(s.scalars(select(AnsibleRun.ident).where(AnsibleRun.rollout_id.is_not(None))))
    assert idents and all(i.endswith("@lab-node") for i in idents)
    back = klp("rollback", "test_klp_livepatch", "--fast")
    assert back.returncode == 0, back.stderr
    for vm in lab.names:
        assert livepatches(lab, vm) == [] and modules(lab, vm) == [], vm


# ------------------------------------------------------------------------------- reboots

BOOT_DIR = "/var/lib/klpfleet/boot/$(uname -r)"


def lab_reboot(lab: Lab, vm: str, *kernel: str) -> None:
    """`klpfleet lab reboot`, keeping what the VM keeps (Lab.reboot also resets it)."""
    proc = run_klpfleet("lab", "reboot", "--dir", str(lab.directory), vm, *kernel, "-o", "json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    lab.info = json.loads(proc.stdout)["data"]


def probe(lab: Lab, url: str, vm: str) -> dict:
    proc = run_klpfleet("--db", url, "probe", "--known-hosts", str(lab.known_hosts), "--hosts", vm, "-o", "json")
    assert proc.returncode in (0, 1), proc.stderr
    return next(h for h in json.loads(proc.stdout)["data"]["hosts"] if h["host"] == vm)


def enable_order(lab: Lab, vm: str) -> list[str]:
    lines = lab.sh(vm, "dmesg").splitlines()
    return [line.split("'")[1] for line in lines if "livepatch: enabling patch '" in line]


def test_kept_patches_come_back_after_a_reboot_in_stack_order(clean_lab, lab_db):
    lab = clean_lab
    assert apply(lab, lab_db, "test_klp_livepatch").returncode == 0
    stacked = apply(lab, lab_db, "test_klp_atomic_replace", "-e", json.dumps({"klp_patch_params": {"replace": 0}}))
    assert stacked.returncode == 0, stacked.stdout[-3000:]
    manifest = json.loads(lab.sh("lab1", f"cat {BOOT_DIR}/manifest.json"))
    assert [e["name"] for e in manifest["patches"]] == ["test_klp_livepatch", "test_klp_atomic_replace"]
    assert lab.sh("lab1", "stat -c %a /var/lib/klpfleet/boot $(ls -d /var/lib/klpfleet/boot/*/)").split() == [
        "700",
        "700",
    ]
    assert probe(lab, lab_db, "lab1")["rebooted"] is False  # the boot klpfleet saw it patched in

    lab_reboot(lab, "lab1")
    # The kernel itself, independently of klpfleet: both patches act again, loaded bottom first.
    assert lab.sh("lab1", "cat /proc/cmdline") == PATCHED_CMDLINE
    assert lab.sh("lab1", "cat /proc/meminfo") == "test_klp_atomic_replace: this has been live patched\n"
    assert enable_order(lab, "lab1") == ["test_klp_livepatch", "test_klp_atomic_replace"]
    log = lab.sh("lab1", "dmesg")
    assert "klpfleet-boot: test_klp_livepatch: applied" in log and "klpfleet-lab: boot loader exited 0" in log
    found = probe(lab, lab_db, "lab1")
    assert (found["rebooted"], found["drift"]) == (True, [])
    assert state(lab_db, "lab1", "test_klp_livepatch")[0] == "applied"
    assert (
        last_event(lab_db, "lab1", "patch.reloaded_at_boot", "test_klp_atomic_replace").details["outcome"] == "applied"
    )
    assert last_event(lab_db, "lab1", "host.rebooted").details["kept_for_boot"] == [
        "test_klp_livepatch",
        "test_klp_atomic_replace",
    ]

    # Another kernel release: nothing kept for it loads, and the patches for the old one are superseded.
    other = "bookworm" if lab.version >= (6, 12) or lab.version < (6, 0) else "trixie"
    lab_reboot(lab, "lab1", "--kernel", other)
    assert next(v for v in lab.info["vms"] if v["name"] == "lab1")["release"] != lab.release
    assert livepatches(lab, "lab1") == []
    gathered = playbook(lab.inventory, ROOT / "playbooks" / "gather.yml", "--limit", "lab1", db_url=lab_db)
    assert gathered.returncode == 0, gathered.stdout[-2000:]
    assert state(lab_db, "lab1", "test_klp_livepatch")[0] == "superseded"
    assert state(lab_db, "lab1", "test_klp_atomic_replace")[0] == "superseded"

    lab_reboot(lab, "lab1")  # back to the lab's kernel: what was kept for it loads again
    assert lab.sh("lab1", "cat /proc/cmdline") == PATCHED_CMDLINE
    assert probe(lab, lab_db, "lab1")["drift"] == []
    assert state(lab_db, "lab1", "test_klp_atomic_replace")[0] == "applied"


@pytest.mark.any_kernel  # the controller and the boot manifest, not the kernel
def test_a_removed_patch_stays_removed_after_a_reboot(clean_lab, lab_db):
    lab = clean_lab
    assert apply(lab, lab_db, "test_klp_livepatch").returncode == 0
    assert remove(lab, lab_db, "test_klp_livepatch").returncode == 0
    assert json.loads(lab.sh("lab1", f"cat {BOOT_DIR}/manifest.json"))["patches"] == []
    lab_reboot(lab, "lab1")
    assert livepatches(lab, "lab1") == [] and lab.sh("lab1", "cat /proc/cmdline") != PATCHED_CMDLINE


@pytest.mark.any_kernel  # the controller and the boot manifest, not the kernel
def test_a_blocked_patch_is_dropped_at_the_next_gather_and_not_loaded_at_the_next_boot(clean_lab, lab_db, tmp_path):
    lab = clean_lab
    assert apply(lab, lab_db, "test_klp_livepatch").returncode == 0
    blocked = run_klpfleet("--db", lab_db, "patch", "block", "test_klp_livepatch", "--reason", "INC-7: oopses")
    assert blocked.returncode == 0, blocked.stderr
    config = tmp_path / "fleet.klpfleet.yml"  # an operator's own gather, through klpfleet's inventory plugin
    config.write_text(f"plugin: klpfleet.livepatch.fleet\ndb: {lab_db}\n")
    gathered = playbook(config, ROOT / "playbooks" / "gather.yml", "--limit", "lab1", db_url=lab_db)
    assert gathered.returncode == 0, gathered.stdout[-3000:]
    assert json.loads(lab.sh("lab1", f"cat {BOOT_DIR}/manifest.json"))["patches"] == []
    assert not [f for f in lab.sh("lab1", f"ls {BOOT_DIR}").split() if f.endswith(".ko")]  # its kept copy too
    assert livepatches(lab, "lab1") == ["test_klp_livepatch"]  # running until a rollback or a reboot
    assert last_event(lab_db, "lab1", "boot.dropped", "test_klp_livepatch").details["blocked"] is True
    lab_reboot(lab, "lab1")
    assert livepatches(lab, "lab1") == [] and lab.sh("lab1", "cat /proc/cmdline") != PATCHED_CMDLINE


@pytest.mark.any_kernel  # transport and host files, not the kernel
def test_directories_another_user_owns_are_refused_on_a_real_host(clean_lab, lab_db):
    """On a real kernel as root: a boot directory given to another user after a patch was kept is refused by the boot
    loader before it loads anything; a klp_remote_dir another user owns is refused before any module is loaded."""
    lab = clean_lab
    assert apply(lab, lab_db, "test_klp_livepatch").returncode == 0
    lab.sh("lab1", f"chown 65534 {BOOT_DIR}")
    said = lab.sh("lab1", "python3 /var/lib/klpfleet/boot/klpfleet-boot.pyz load; echo rc=$?")
    assert "not a directory only this user (uid 0) owns" in said and said.strip().endswith("rc=1"), said
    assert "klpfleet-boot: cannot read the manifest" in lab.sh("lab1", "dmesg")
    lab.sh("lab1", f"chown 0 {BOOT_DIR}; mkdir -p /srv/shared; chown 65534 /srv/shared")
    refused = apply(lab, lab_db, "test_klp_atomic_replace", "-e", "klp_remote_dir=/srv/shared/patches")
    assert refused.returncode != 0 and "invalid_argument" in refused.stdout, refused.stdout[-3000:]
    assert livepatches(lab, "lab1") == ["test_klp_livepatch"]
    lab.sh("lab1", "rm -rf /srv/shared")


def test_probe_over_real_ssh_reads_the_vms_and_marks_drift(clean_lab, lab_db):
    lab = clean_lab
    assert apply(lab, lab_db, "test_klp_livepatch", limit="all").returncode == 0
    # Removed by hand on lab2, behind klpfleet's back.
    lab.sh("lab2", "echo 0 > /sys/kernel/livepatch/test_klp_livepatch/enabled\nsleep 2\nrmmod test_klp_livepatch\n")
    proc = run_klpfleet("--db", lab_db, "probe", "--known-hosts", str(lab.known_hosts), "-o", "json")
    assert proc.returncode == 1, proc.stderr  # drift
    hosts = {h["host"]: h for h in json.loads(proc.stdout)["data"]["hosts"]}
    assert {h["status"] for h in hosts.values()} == {"ok"}
    assert hosts["lab1"]["kernel_release"] == lab.info["release"]
    assert state(lab_db, "lab2", "test_klp_livepatch")[0] == "drift"
    assert state(lab_db, "lab1", "test_klp_livepatch")[0] == "applied"


@pytest.mark.any_kernel  # transport and host files, not the kernel
def test_probe_refuses_a_vm_whose_host_key_is_not_known(clean_lab, lab_db, tmp_path):
    (tmp_path / "known_hosts").write_text("")
    proc = run_klpfleet("--db", lab_db, "probe", "--known-hosts", str(tmp_path / "known_hosts"), "-o", "json")
    assert proc.returncode == 1
    hosts = json.loads(proc.stdout)["data"]["hosts"]
    assert {h["status"] for h in hosts} == {"host_key_unknown"}


def drop_ssh_connections(port: int) -> int:
    """Kill this machine's ssh clients (Ansible's ControlPersist master included) talking to the port:
    for the host, the network is gone. The remote module has no tty, so it is not told and goes on."""
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and Path(argv[0].decode(errors="replace")).name == "ssh"
            and any(str(port).encode() in arg for arg in argv[1:])
        ):
            os.kill(int(entry), signal.SIGKILL)
            killed += 1
    return killed


@pytest.mark.any_kernel  # transport and host files, not the kernel
def test_an_ssh_connection_dropped_during_a_transition_is_re_read_not_repeated(clean_lab, lab_db):
    lab = clean_lab
    port = next(vm["port"] for vm in lab.info["vms"] if vm["name"] == "lab2")
    enables = "dmesg | grep -c \"enabling patch 'test_klp_callbacks_demo'\" || true"
    before = int(lab.sh("lab2", enables))
    lab.sh("lab2", "insmod /root/test_modules/test_klp_callbacks_busy.ko block_transition=Y")

    def drop_when_transitioning() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if lab.sh("lab2", "cat /sys/kernel/livepatch/*/transition 2>/dev/null || true").strip() == "1":
                break
            time.sleep(0.5)
        assert drop_ssh_connections(port) >= 1
        time.sleep(2)
        lab.sh("lab2", "echo N > /sys/module/test_klp_callbacks_busy/parameters/block_transition")

    dropper = threading.Thread(target=drop_when_transitioning)
    dropper.start()
    proc = apply(lab, lab_db, "test_klp_callbacks_demo", "-e", "klp_transition_timeout=90", limit="lab2")
    dropper.join()
    # Ansible reports the lost connection as unreachable or, when its ssh client dies by a signal, as a
    # failed task ("Module result deserialization failed"); either way the run fails for that host.
    assert proc.returncode in (2, 4), proc.stdout[-3000:]
    assert "failed=1" in recap(proc, "lab2") or "unreachable=1" in recap(proc, "lab2")
    assert state(lab_db, "lab2", "test_klp_callbacks_demo")[0] in ("failed", "unreachable")

    # The host finished the transition on its own; the next read finds the truth.
    gathered = playbook(lab.inventory, ROOT / "playbooks" / "gather.yml", "--limit", "lab2", db_url=lab_db)
    assert gathered.returncode == 0, gathered.stdout[-3000:]
    assert state(lab_db, "lab2", "test_klp_callbacks_demo")[0] == "applied"
    assert lab.sh("lab2", "cat /sys/kernel/livepatch/test_klp_callbacks_demo/transition") == "0\n"
    again = apply(lab, lab_db, "test_klp_callbacks_demo", limit="lab2")
    assert again.returncode == 0 and "changed=0" in recap(again, "lab2"), again.stdout[-3000:]
    assert int(lab.sh("lab2", enables)) == before + 1  # loaded once, never twice
