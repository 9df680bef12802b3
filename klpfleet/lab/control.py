"""`klpfleet lab up | status | down`: build (or reuse) the cached artifacts, boot N VMs, and hand them to
Ansible and klpfleet as an inventory, a known_hosts file and registered hosts."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klpfleet.errors import UsageError
from klpfleet.lab import artifacts, upstream
from klpfleet.lab.artifacts import Progress
from klpfleet.lab.vms import (
    STATE_FILE,
    VM,
    LabState,
    alive,
    boot,
    build_lab_layer,
    build_vm_layer,
    check_kernel_arg,
    concatenate,
    free_port,
    new_ed25519_key,
    ssh_banner,
    stop_vm,
    write_inventory,
)
from klpfleet.wording import listed

MAX_VMS = 8
LAB_MARKER = ".klpfleet-lab"


def default_module_source() -> Path:
    """tests/lab/modules of the checkout klpfleet runs from (the lab is a development tool)."""
    return Path(__file__).resolve().parents[2] / "tests" / "lab" / "modules"


def _claim(lab: Path) -> None:
    if lab.exists() and any(lab.iterdir()) and not (lab / LAB_MARKER).exists():
        raise UsageError(f"{lab} exists and is not a klpfleet lab directory")
    lab.mkdir(parents=True, exist_ok=True)
    (lab / LAB_MARKER).touch()


def up(
    lab: Path,
    count: int,
    *,
    release: str | None,
    accel: str,
    module_source: Path | None,
    db_url: str | None,
    progress: Progress,
) -> dict[str, Any]:
    if not 1 <= count <= MAX_VMS:
        raise UsageError(f"--vms must be between 1 and {MAX_VMS}")
    if accel not in ("auto", "tcg", "kvm"):
        raise UsageError("--accel must be auto, tcg or kvm")
    lab = lab.resolve()
    _claim(lab)
    cache = artifacts.cache_dir()
    with artifacts.cache_locked(cache, progress):
        built = _artifacts(cache, release, module_source, progress)
        return _boot_lab(lab, count, built, accel, cache, db_url, progress)


def prepare(release: str | None, module_source: Path | None, progress: Progress) -> dict[str, Any]:
    """Build (or find) everything a lab on this kernel boots, and boot nothing: a cache made ahead of time."""
    cache = artifacts.cache_dir()
    with artifacts.cache_locked(cache, progress):
        built = _artifacts(cache, release, module_source, progress)
    return {"cache": str(cache), "release": built.release, "test_modules": str(built.modules)}


@dataclass(frozen=True)
class _Artifacts:
    release: str
    kernel: Path
    modules: Path
    upstream_suite: Path
    rootfs: Path


def _artifacts(cache: Path, release: str | None, module_source: Path | None, progress: Progress) -> _Artifacts:
    chosen = artifacts.choose_release(cache, release, progress)
    return _Artifacts(
        release=chosen,
        kernel=artifacts.ensure_kernel(cache, chosen, progress),
        modules=artifacts.build_test_modules(cache, chosen, module_source or default_module_source(), progress),
        upstream_suite=upstream.ensure_upstream_suite(cache, chosen, progress),
        rootfs=artifacts.ensure_rootfs(cache, progress),
    )


def _boot_lab(
    lab: Path, count: int, built: _Artifacts, accel: str, cache: Path, db_url: str | None, progress: Progress
) -> dict[str, Any]:
    chosen, kernel_dir, modules_dir, suite, rootfs = (
        built.release,
        built.kernel,
        built.modules,
        built.upstream_suite,
        built.rootfs,
    )

    state = LabState.load(lab)
    if (
        state
        and len(state.vms) == count
        and all(alive(vm.pid) and vm.release in (None, state.release) for vm in state.vms)
        and (state.release, state.test_modules) == (chosen, str(modules_dir))
    ):
        progress(f"lab already up: {count} VM(s) on {state.release}")
        return describe(lab)
    if state:  # stopped, resized, or booted with other modules: start afresh
        down(lab, progress)

    client_key = lab / "id_ed25519"
    if not client_key.exists():
        new_ed25519_key(client_key, "klpfleet-lab")
    authorized = (lab / "id_ed25519.pub").read_text().strip()
    lab_layer = lab / "lab-layer.cpio.gz"
    build_lab_layer(lab_layer, chosen, kernel_dir, modules_dir, suite)

    vms: list[VM] = []
    known: list[str] = []
    for i in range(1, count + 1):
        name = f"lab{i}"
        vm_dir = lab / name
        vm_dir.mkdir(exist_ok=True)
        vm = VM(name=name, port=free_port(), directory=str(vm_dir))
        host_pub = build_vm_layer(vm_dir, name, authorized)
        concatenate([rootfs, lab_layer, vm_dir / "layer.cpio.gz"], vm_dir / "initrd.img")
        known.append(f"[127.0.0.1]:{vm.port} {' '.join(host_pub.split()[:2])}")
        vms.append(vm)
    (lab / "known_hosts").write_text("\n".join(known) + "\n")

    state = LabState(release=chosen, accel=accel, vms=vms, test_modules=str(modules_dir))
    state.save(lab)  # before booting: `lab down` must find whatever did start
    try:
        state.accel = boot(vms, kernel_dir / "vmlinuz", accel, cache, progress)
    finally:
        state.save(lab)
    inventory = write_inventory(lab, vms)
    _register(lab, inventory, db_url, progress)
    return describe(lab)


def _register(lab: Path, inventory: Path, db_url: str | None, progress: Progress) -> None:
    """Import the VMs into the database given with --db, or into the lab's own."""
    from klpfleet.db.engine import open_database
    from klpfleet.db.migrate import upgrade
    from klpfleet.inventory.importer import apply_import
    from klpfleet.inventory.sources import read_inventory

    url = db_url or f"sqlite:///{lab / 'klpfleet.db'}"
    db = open_database(url, create=True)
    upgrade(db)
    with db.session.begin() as s:
        counts = apply_import(s, read_inventory([str(inventory)]), prune=False).counts()
    progress(f"registered in {url}: {listed(counts)}")


def describe(lab: Path) -> dict[str, Any]:
    lab = lab.resolve()
    state = LabState.load(lab)
    if state is None:
        return {"dir": str(lab), "up": False, "release": None, "accel": None, "vms": []}
    vms = [
        {
            "name": vm.name,
            "release": vm.release or state.release,
            "kernel_args": vm.kernel_args,
            "port": vm.port,
            "pid": vm.pid,
            "running": alive(vm.pid),
            "sshd": bool(alive(vm.pid) and ssh_banner(vm.port)),
        }
        for vm in state.vms
    ]
    return {
        "dir": str(lab),
        "up": bool(vms) and all(v["sshd"] for v in vms),
        "release": state.release,
        "accel": state.accel,
        "inventory": str(lab / "inventory.yml"),
        "known_hosts": str(lab / "known_hosts"),
        "private_key": str(lab / "id_ed25519"),
        "test_modules": state.test_modules,
        "db": f"sqlite:///{lab / 'klpfleet.db'}",
        "vms": vms,
    }


PERSISTENT_DIR = "var/lib/klpfleet"  # what survives a VM's reboot, as a disk would keep it
# Run on the VM at shutdown: the persistent directory as a gzip'd tar, base64 (SSH carries text).
SAVE_SCRIPT = f"""cd / || exit 1
sync
if [ -d {PERSISTENT_DIR} ]; then tar -czf - {PERSISTENT_DIR} | base64 -w0; fi
"""


def reboot(
    lab: Path, name: str, progress: Progress, kernel: str | None = None, kernel_args: Sequence[str] = ()
) -> dict[str, Any]:
    """Shut one VM down and boot it again, into the lab's kernel or `kernel` (another lab kernel: a suite or a
    release). What a reboot clears goes (a module a forced transition pinned, everything loaded); what a disk
    keeps stays: the VM's /var/lib/klpfleet, copied out at shutdown and unpacked into its next boot's
    initramfs (the VMs have no block device: Debian builds virtio_blk as a module), so the boot loader finds
    the patches kept for boot exactly where a real host keeps them."""
    lab = lab.resolve()
    state = LabState.load(lab)
    vm = next((v for v in state.vms if v.name == name), None) if state else None
    if state is None or vm is None:
        raise UsageError(f"no VM {name!r} in the lab at {lab} (klpfleet lab up first)")
    cache = artifacts.cache_dir()
    release = artifacts.choose_release(cache, kernel, progress) if kernel else state.release
    kernel_dir = artifacts.ensure_kernel(cache, release, progress)
    layer = lab / "lab-layer.cpio.gz"
    if release != state.release:
        layer = lab / f"lab-layer-{release}.cpio.gz"
        if not layer.exists():
            modules = artifacts.build_test_modules(cache, release, default_module_source(), progress)
            build_lab_layer(
                layer, release, kernel_dir, modules, upstream.ensure_upstream_suite(cache, release, progress)
            )
    vm_dir = Path(vm.directory)
    if alive(vm.pid) and ssh_banner(vm.port):
        _save_persistent(lab, vm, vm_dir / "persist.cpio.gz")
    stop_vm(vm)
    parts = [artifacts.ensure_rootfs(cache, progress), layer, vm_dir / "layer.cpio.gz"]
    if (vm_dir / "persist.cpio.gz").exists():
        parts.append(vm_dir / "persist.cpio.gz")
    concatenate(parts, vm_dir / "initrd.img")
    vm.release = release
    vm.kernel_args = [check_kernel_arg(a) for a in kernel_args]  # for this boot only: the next reboot drops them
    try:
        boot([vm], kernel_dir / "vmlinuz", state.accel, cache, progress)
    finally:
        state.save(lab)
    progress(f"{name} rebooted into {release}")
    return describe(lab)


def _save_persistent(lab: Path, vm: VM, dest: Path) -> None:
    """The VM's persistent directory, as an initramfs layer for its next boot (none when it has none)."""
    import base64
    import binascii
    import io
    import tarfile
    import tempfile

    from klpfleet.lab.artifacts import LabError, pack_tree
    from klpfleet.lab.selftest import vm_target
    from klpfleet.probe.ssh import OK, run_remote

    target, known = vm_target(lab, vm.name)
    result = run_remote(target, ["sh", "-s"], SAVE_SCRIPT, known, 10.0, 120.0)
    if result.status != OK or result.exit_code != 0:
        raise LabError(f"{vm.name}: saving {PERSISTENT_DIR} before the reboot failed: {result.error or result.stderr}")
    dest.unlink(missing_ok=True)
    if not result.stdout.strip():
        return
    try:
        archive = base64.b64decode(result.stdout.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise LabError(f"{vm.name}: {PERSISTENT_DIR} came back garbled") from None
    with tempfile.TemporaryDirectory(dir=dest.parent) as staging:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(staging, filter="tar")  # modes kept (0700 directories, 0400 modules); paths checked
        pack_tree(Path(staging), dest)


def down(lab: Path, progress: Progress) -> int:
    lab = lab.resolve()
    state = LabState.load(lab)
    if state is None:
        return 0
    stopped = 0
    for vm in state.vms:
        if alive(vm.pid):
            stop_vm(vm)
            stopped += 1
        shutil.rmtree(vm.directory, ignore_errors=True)
    (lab / STATE_FILE).unlink(missing_ok=True)
    progress(f"stopped {stopped} VM(s)")
    return stopped
