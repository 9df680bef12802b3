"""Lab VMs: Debian's kernel under QEMU, the root filesystem as the initramfs, sshd on a forwarded
127.0.0.1 port and nothing else on any network.

The initrd of a VM is three concatenated cpio archives (the kernel unpacks them in order): the cached
root filesystem, the lab layer (init, NIC driver, test modules, scripts) and the VM's own layer (host key,
authorized key, hostname). Keys are generated here, so known_hosts is exact and nothing is trusted on
first use. State lives in <lab dir>/lab.json; `lab status` and `lab down` work from it alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from klpfleet.errors import UsageError
from klpfleet.lab import upstream
from klpfleet.lab.artifacts import LabError, pack_tree

STATE_FILE = "lab.json"
MEMORY_MB = 1024
BOOT_TIMEOUT = float(os.environ.get("KLPFLEET_LAB_BOOT_TIMEOUT", "300"))
KVM_PROBE_SECONDS = 20.0  # a working KVM guest prints its banner at once; a hung one prints nothing

Progress = Callable[[str], None]


@dataclass
class VM:
    name: str
    port: int
    directory: str
    pid: int | None = None
    release: str | None = None  # the kernel it runs, when `lab reboot --kernel` booted it into another one
    kernel_args: list[str] = field(default_factory=list)  # `lab reboot --kernel-arg`: e.g. module.sig_enforce=1


@dataclass
class LabState:
    release: str
    accel: str
    vms: list[VM] = field(default_factory=list)
    test_modules: str = ""  # the built .ko files (in the cache), for tests that register them as patches

    @classmethod
    def load(cls, lab: Path) -> LabState | None:
        path = lab / STATE_FILE
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            return cls(raw["release"], raw["accel"], [VM(**vm) for vm in raw["vms"]], raw.get("test_modules", ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{path}: not a klpfleet lab state file ({exc})") from None

    def save(self, lab: Path) -> None:
        tmp = lab / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(lab / STATE_FILE)


# -- keys -----------------------------------------------------------------------------------------------


def new_ed25519_key(private_path: Path, comment: str) -> str:
    """Write an OpenSSH private key (0600) and return the public key line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    line = f"{public.decode()} {comment}"
    private_path.with_suffix(".pub").write_text(line + "\n")
    return line


# -- initrd layers --------------------------------------------------------------------------------------


def guest_file(name: str) -> bytes:
    return resources.files("klpfleet.lab").joinpath("guest", name).read_bytes()


def _place(root: Path, rel: str, data: bytes, mode: int) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def build_lab_layer(dest: Path, release: str, kernel_dir: Path, modules_dir: Path, upstream_suite: Path) -> None:
    staging = dest.with_suffix(".d")
    shutil.rmtree(staging, ignore_errors=True)
    # usr/lib, not lib: /lib is a symlink in the root filesystem (merged /usr) and a directory entry
    # in a later archive would replace it.
    _place(staging, "init", guest_file("init"), 0o755)
    _place(staging, "root/lab/run-steps.sh", guest_file("run-steps.sh"), 0o755)
    _place(staging, "root/lab/run-upstream.sh", guest_file("run-upstream.sh"), 0o755)
    _place(staging, "etc/ssh/sshd_config.d/klpfleet-lab.conf", guest_file("sshd.conf"), 0o644)
    _place(staging, f"usr/lib/modules/{release}/e1000.ko", (kernel_dir / "e1000.ko").read_bytes(), 0o644)
    for ko in sorted(modules_dir.glob("*.ko")):
        _place(staging, f"root/test_modules/{ko.name}", ko.read_bytes(), 0o644)
    for ko in sorted(modules_dir.glob("rebuilt/*.ko")):
        _place(staging, f"root/test_modules/rebuilt/{ko.name}", ko.read_bytes(), 0o644)
    upstream.place_in_layer(staging, release, upstream_suite)
    pack_tree(staging, dest)
    shutil.rmtree(staging)


def build_vm_layer(vm_dir: Path, name: str, authorized_key: str) -> str:
    """Host key, authorized key and hostname of one VM; returns the host's public key line."""
    staging = vm_dir / "layer"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "etc" / "ssh").mkdir(parents=True)
    host_pub = new_ed25519_key(staging / "etc" / "ssh" / "ssh_host_ed25519_key", f"root@{name}")
    (staging / "etc" / "ssh" / "ssh_host_ed25519_key.pub").chmod(0o644)
    _place(staging, "root/.ssh/authorized_keys", (authorized_key + "\n").encode(), 0o600)
    (staging / "root" / ".ssh").chmod(0o700)
    (staging / "root").chmod(0o700)
    _place(staging, "etc/hostname", (name + "\n").encode(), 0o644)
    pack_tree(staging, vm_dir / "layer.cpio.gz")
    shutil.rmtree(staging)
    return host_pub


def concatenate(parts: list[Path], dest: Path) -> None:
    with dest.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)


# -- QEMU -----------------------------------------------------------------------------------------------


KERNEL_ARG_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}(=[A-Za-z0-9_.,:-]{1,64})?$")


def check_kernel_arg(arg: str) -> str:
    """One kernel command-line parameter (`name` or `name=value`): a word, never a space or a quote."""
    if not KERNEL_ARG_RE.match(arg):
        raise UsageError(f"{arg!r} is not a kernel parameter (name or name=value, letters, digits, _.-)")
    return arg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qemu_argv(vm: VM, kernel: Path, accel: str) -> list[str]:
    d = Path(vm.directory)
    return [
        "qemu-system-x86_64",
        "-name",
        f"klpfleet-lab-{vm.name}",
        "-accel",
        accel,
        "-m",
        str(MEMORY_MB),
        "-smp",
        "1",
        "-kernel",
        str(kernel),
        "-initrd",
        str(d / "initrd.img"),
        "-append",
        " ".join(["console=ttyS0 panic=-1", *vm.kernel_args]),
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{d / 'console.log'}",
        # No route anywhere: only the guest's sshd, forwarded to a loopback port. No option ROM: the
        # kernel is booted directly, and the ROM package is only a recommendation of QEMU's.
        "-netdev",
        f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{vm.port}-:22",
        "-device",
        "e1000,netdev=net0,romfile=",
        "-no-reboot",
        "-daemonize",
        "-pidfile",
        str(d / "qemu.pid"),
    ]


def start_vm(vm: VM, kernel: Path, accel: str) -> None:
    d = Path(vm.directory)
    (d / "console.log").unlink(missing_ok=True)
    try:
        proc = subprocess.run(qemu_argv(vm, kernel, accel), capture_output=True, text=True, check=False)  # noqa: S603 - argv list
    except FileNotFoundError:
        raise LabError("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise LabError(f"{vm.name}: qemu failed to start: {last}")
    vm.pid = int((d / "qemu.pid").read_text().strip())


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline


def stop_vm(vm: VM, grace: float = 5.0) -> None:
    if not alive(vm.pid):
        return
    assert vm.pid is not None
    os.kill(vm.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(vm.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(vm.pid):
        os.kill(vm.pid, signal.SIGKILL)


def ssh_banner(port: int, timeout: float = 3.0) -> str | None:
    """The guest's sshd banner, or None. QEMU accepts on the forwarded port even before the guest listens,
    then closes: only a banner proves sshd is up."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = s.recv(256)
    except OSError:
        return None
    text = data.decode("ascii", "replace")
    return text.strip() if text.startswith("SSH-") else None


def console_started(vm: VM) -> bool:
    try:
        return "Linux version" in (Path(vm.directory) / "console.log").read_text(errors="replace")
    except OSError:
        return False


def console_tail(vm: VM, lines: int = 3) -> str:
    try:
        text = (Path(vm.directory) / "console.log").read_text(errors="replace")
    except OSError:
        return "no console output"
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) or "no console output"


def wait_for_ssh(vms: list[VM], deadline: float) -> list[VM]:
    """Wait until every VM serves its sshd banner; return those that did not by the deadline."""
    pending = list(vms)
    while pending and time.monotonic() < deadline:
        for vm in list(pending):
            if not alive(vm.pid):
                raise LabError(f"{vm.name}: the VM stopped while booting: {console_tail(vm)}")
            if ssh_banner(vm.port):
                pending.remove(vm)
        if pending:
            time.sleep(1.0)
    return pending


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def boot(vms: list[VM], kernel: Path, accel: str, cache: Path, progress: Progress) -> str:
    """Start the VMs and wait for sshd. `auto` tries KVM when /dev/kvm opens and falls back to TCG when
    the guest prints nothing (KVM can open yet hang); the finding is remembered in the cache."""
    hung_note = cache / "kvm-hangs"
    if accel == "auto":
        accel = "kvm" if kvm_usable() and not hung_note.exists() else "tcg"
        if accel == "kvm" and not _kvm_guest_starts(vms[0], kernel):
            progress("KVM opened but the guest printed nothing: falling back to TCG (remembered)")
            hung_note.write_text(f"a KVM guest printed nothing within {KVM_PROBE_SECONDS:.0f} s on this machine\n")
            accel = "tcg"
    for vm in vms:
        if not alive(vm.pid):
            start_vm(vm, kernel, accel)
    return _await(vms, accel, progress)


def _kvm_guest_starts(vm: VM, kernel: Path) -> bool:
    start_vm(vm, kernel, "kvm")
    deadline = time.monotonic() + KVM_PROBE_SECONDS
    while time.monotonic() < deadline and alive(vm.pid) and not console_started(vm):
        time.sleep(0.5)
    if console_started(vm):
        return True
    stop_vm(vm, grace=1.0)
    return False


def _await(vms: list[VM], accel: str, progress: Progress) -> str:
    progress(f"booting {len(vms)} VM(s) ({accel}); waiting for sshd")
    late = wait_for_ssh(vms, time.monotonic() + BOOT_TIMEOUT)
    if late:
        vm = late[0]
        raise LabError(f"{vm.name}: no sshd on 127.0.0.1:{vm.port} after {BOOT_TIMEOUT:.0f} s: {console_tail(vm)}")
    return accel


# -- inventory ------------------------------------------------------------------------------------------


def write_inventory(lab: Path, vms: list[VM]) -> Path:
    """An Ansible inventory for the VMs: root over SSH with the lab's key, host keys from the lab's
    known_hosts only. One failure domain (zone) per VM, so waves can be cut by zone."""
    import yaml

    key = lab / "id_ed25519"
    known = lab / "known_hosts"
    hosts: dict[str, Any] = {
        vm.name: {"ansible_host": "127.0.0.1", "ansible_port": vm.port, "zone": f"lab-{i}"}
        for i, vm in enumerate(vms, start=1)
    }
    doc = {
        "all": {
            "children": {"lab": {"hosts": hosts}},
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(key),
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes",
                "ansible_python_interpreter": "/usr/bin/python3",
                "klp_become": False,
            },
        }
    }
    path = lab / "inventory.yml"
    path.write_text("# Written by `klpfleet lab up`.\n" + yaml.safe_dump(doc, sort_keys=False))
    return path
