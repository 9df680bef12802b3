"""Simulated hosts and fleets, and the Ansible inventory that reaches them.

A simulated host is a directory holding its kernel's state. A fleet is many of them plus an inventory
whose hosts use the simulated kernel through `klp_backend: sim` and `klp_sim_root`, over Ansible's
local connection with the controller's interpreter. Nothing is registered in any database here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from klpfleet.collection import module_util
from klpfleet.errors import UsageError
from klpfleet.sim.spec import DEFAULT_KERNEL_RELEASE, normalize, write_ko

# A port on loopback where nothing listens: Ansible's ssh connection to it fails at once, as to a host
# that is down. It never leaves the machine.
UNREACHABLE_PORT = 9
FLEET_KEYS = {"kernel_release", "hosts", "labels", "faults", "speed", "debug"}
FAULT_KEYS = {
    "refuse",
    "stall",
    "unreachable",
    "kernel_release",
    "modules",
    "sig_enforce",
    "lockdown",
    "livepatch",
    "log_unreadable",
}


def sim_kernel() -> Any:
    """The collection's simulated kernel module."""
    return module_util("_sim_kernel")


def create_host(
    root: Path,
    kernel_release: str = DEFAULT_KERNEL_RELEASE,
    *,
    speed: float = 1.0,
    faults: dict[str, Any] | None = None,
    debug: bool = True,
) -> Path:
    """One simulated host in root. Plain modules named in faults['modules'] are loaded at boot."""
    sim = sim_kernel()
    faults = faults or {}
    if (root / sim.STATE_FILE).exists():
        raise UsageError(f"{root} already holds a simulated host")
    if not re.match(r"^\d+\.\d+[\w.+~-]*$", kernel_release, re.ASCII):
        raise UsageError(f"{kernel_release!r} is not a kernel release")
    root.mkdir(parents=True, exist_ok=True)
    module_dir = root / "modules"
    options: dict[str, Any] = {
        "speed": speed,
        "module_dir": str(module_dir.resolve()),
        "debug": {"livepatch": debug, "try_switch": False},
        "sig_enforce": bool(faults.get("sig_enforce", False)),
        "lockdown": str(faults.get("lockdown", "none")),
        "livepatch": bool(faults.get("livepatch", True)),
    }
    refuse = faults.get("refuse")
    if refuse:
        for r in refuse if isinstance(refuse, list) else [refuse]:
            if not isinstance(r, dict):
                raise UsageError("a refuse fault is {patch: GLOB, object: GLOB, errno: NAME}")
            try:
                errno_ = sim.errno_value(r.get("errno", "ENODEV"))
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            options.setdefault("faults", {}).setdefault("refuse", []).append(
                {"patch": str(r.get("patch", "*")), "object": str(r.get("object", "*")), "errno": errno_}
            )
    if faults.get("log_unreadable"):  # dmesg_restrict without CAP_SYSLOG, a container, an LSM
        options.setdefault("faults", {})["log_unreadable"] = True
    stall = faults.get("stall") or []
    stalls = [dict(s) for s in (stall if isinstance(stall, list) else [stall])]
    options["boot"] = {"stalls": stalls, "modules": [str(n) for n in faults.get("modules", []) or []]}
    sim.create_host(str(root), kernel_release, **options)
    with sim.SimHost(str(root)) as kernel:
        _start_workload(kernel, module_dir)
    return root


def _start_workload(kernel: Any, module_dir: Path) -> None:
    """What the host runs from boot: tasks that sleep in kernel functions, plain modules loaded by name."""
    boot = kernel.s.get("boot") or {}
    for s in boot.get("stalls") or []:
        seconds = s.get("seconds", "forever")
        kernel.add_stall(
            str(s.get("function", "*")),
            None if seconds == "forever" else float(seconds),
            bool(s.get("ignores_signal", True)),
            str(s.get("comm", "app_worker")),
        )
    for name in boot.get("modules") or []:
        spec = normalize(
            {
                "name": name,
                "kernel_release": kernel.s["kernel_release"],
                "livepatch": False,
                "intree": True,
                "signed": True,
            }
        )
        path = write_ko(spec, module_dir / f"{name}.ko")
        rc, _, err = kernel.tool(["insmod", str(path)])
        if rc:
            raise UsageError(f"booting {kernel.s['kernel_release']}: {err.strip()}")


def reboot_host(
    root: Path, kernel_release: str | None = None, transition_timeout: float = 60.0, boot_loader: bool = True
) -> dict[str, Any]:
    """Reboot a simulated host (into kernel_release, default the same one): a fresh kernel, the same build options,
    faults and boot workload, then the boot loader of the collection loads what the host kept for that release,
    exactly as klpfleet-boot.service does on a real host (boot_loader=False: a boot with klpfleet.boot=0 on the
    kernel command line, which skips it). Returns the loader's status (no results when it was skipped)."""
    sim = sim_kernel()
    _boot, _persist = module_util("_boot"), module_util("_persist")

    if kernel_release is not None and not re.match(r"^\d+\.\d+[\w.+~-]*$", kernel_release, re.ASCII):
        raise UsageError(f"{kernel_release!r} is not a kernel release")
    try:
        with sim.SimHost(str(root)) as kernel:
            fresh = sim.rebooted(kernel.s, kernel_release)
            kernel.s.clear()
            kernel.s.update(fresh)
            _start_workload(kernel, Path(kernel.s.get("module_dir") or root / "modules"))
    except OSError as exc:
        raise UsageError(f"{root}: {exc.strerror}") from None
    prims = sim.SimPrimitives(str(root))
    if not boot_loader:
        with sim.SimHost(str(root)) as kernel:
            release, boot_id = kernel.s["kernel_release"], kernel.s["boot_id"]
        return {"boot_id": boot_id, "kernel_release": release, "results": [], "skipped": "klpfleet.boot=0"}
    return dict(_boot.load_all(prims, _persist.default_dir("sim", str(root)), transition_timeout))


def _host_names(value: Any) -> list[str]:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value <= 100_000:
            raise UsageError("fleet: hosts must be between 1 and 100000")
        width = max(2, len(str(value)))
        return [f"sim-{i:0{width}d}" for i in range(1, value + 1)]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        for name in value:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", name):
                raise UsageError(f"fleet: {name!r} is not a host name")
        if len(set(value)) != len(value):
            raise UsageError("fleet: host names repeat")
        return list(value)
    raise UsageError("fleet: hosts is a count or a list of names")


def load_fleet_spec(path: str | Path) -> dict[str, Any]:
    from klpfleet.yamlfile import load_yaml

    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: a fleet spec is a mapping")
    unknown = set(doc) - FLEET_KEYS
    if unknown:
        raise UsageError(f"{path}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    return doc


def create_fleet(directory: Path, spec: dict[str, Any]) -> dict[str, Any]:
    names = _host_names(spec.get("hosts"))
    release = str(spec.get("kernel_release") or DEFAULT_KERNEL_RELEASE)
    labels = spec.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, list) and v for v in labels.values()):
        raise UsageError("fleet: labels maps a label to a non-empty list of values")
    for key, values in labels.items():
        if not re.match(r"^[a-z][a-z0-9_]{0,30}$", str(key)):
            raise UsageError(f"fleet: label {key!r} must be a lowercase identifier")
        for value in values:  # written into inventory.yml: plain words only, never a template or a new line
            if not isinstance(value, (str, int)) or not re.match(r"^[A-Za-z0-9_.-]{1,63}$", str(value)):
                raise UsageError(f"fleet: label {key} value {str(value)[:40]!r} must be a word (letters, digits, _.-)")
    faults = spec.get("faults") or {}
    if not isinstance(faults, dict):
        raise UsageError("fleet: faults maps a host name to its faults")
    sim = sim_kernel()
    for host, f in faults.items():
        if host not in names:
            raise UsageError(f"fleet: faults name {host!r}, which is not in the fleet")
        if not isinstance(f, dict) or set(f) - FAULT_KEYS:
            raise UsageError(f"fleet: faults of {host}: keys are {', '.join(sorted(FAULT_KEYS))}")
        refuse = f.get("refuse")
        for r in (refuse if isinstance(refuse, list) else [refuse]) if refuse else []:
            try:
                sim.errno_value(r.get("errno", "ENODEV") if isinstance(r, dict) else None)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"fleet: faults of {host}: {exc}") from None
    if directory.exists() and any(directory.iterdir()):
        raise UsageError(f"{directory} is not empty: a fleet needs a directory of its own")
    speed = spec.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0 <= speed <= 1000:
        raise UsageError(f"fleet: speed {str(speed)[:40]!r} must be a number from 0 (instant) to 1000")
    created = not directory.exists()
    try:
        return _create_fleet(directory, names, release, labels, faults, speed, bool(spec.get("debug", True)))
    except BaseException:
        if created:
            shutil.rmtree(directory, ignore_errors=True)  # nothing half-made is left behind
        raise


def _create_fleet(
    directory: Path,
    names: list[str],
    release: str,
    labels: dict[str, Any],
    faults: dict[str, Any],
    speed: float,
    debug: bool,
) -> dict[str, Any]:

    hosts: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        host_faults = faults.get(name, {})
        root = (directory / "hosts" / name).resolve()
        create_host(
            root,
            str(host_faults.get("kernel_release", release)),
            speed=speed,
            faults=host_faults,
            debug=debug,
        )
        hostvars: dict[str, Any] = {"klp_sim_root": str(root)}
        for key, values in labels.items():
            value = str(values[i % len(values)])
            hostvars[key] = value
            groups.setdefault(f"{key}_{value}", {"hosts": {}})["hosts"][name] = {}
        if host_faults.get("unreachable"):
            hostvars.update(
                ansible_connection="ssh",
                ansible_host="127.0.0.1",
                ansible_port=UNREACHABLE_PORT,
                klp_sim_unreachable=True,
            )
        hosts[name] = hostvars
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "klp_backend": "sim",
            },
            "hosts": hosts,
            "children": dict(sorted(groups.items())),
        }
    }
    (directory / "inventory.yml").write_text(
        "# Simulated fleet written by `klpfleet sim fleet create`; hosts use the simulated kernel in klp_sim_root.\n"
        + yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False)
    )
    return {
        "directory": str(directory.resolve()),
        "inventory": str((directory / "inventory.yml").resolve()),
        "hosts": len(names),
        "groups": sorted(groups),
        "faults": sorted(faults),
    }
