"""The userland tools that talk to the kernel (insmod, rmmod, modprobe, modinfo, dmesg), answering for a
simulated host: what the selftest runner puts first on PATH, so that unchanged scripts load modules into the
simulated kernel and read its log. `python -m klpfleet.sim.kerneltools TOOL ARGS...`, with the host's directory
in KLPFLEET_SIM_HOST; exit status and stderr are the real tools' (kmod's wording, docs/kernel.md)."""

from __future__ import annotations

import os
import sys

from klpfleet.collection import module_util

HOST_ENV = "KLPFLEET_SIM_HOST"
KMOD_TOOLS = ("insmod", "rmmod", "modprobe")


def dmesg_lines(records: list[tuple[int, float, str]]) -> list[str]:
    """Kernel log records as dmesg prints them: `[seconds since boot] text`."""
    return [f"[{ts:12.6f}] {text}" for _, ts, text in records]


def dmesg(prims: object) -> tuple[int, str, str]:
    records, _ = prims.read_log(-1)  # type: ignore[attr-defined]
    if prims.log_error:  # type: ignore[attr-defined]
        return 1, "", f"dmesg: read kernel buffer failed: {prims.log_error}\n"  # type: ignore[attr-defined]
    return 0, "".join(line + "\n" for line in dmesg_lines(records)), ""


def modinfo(args: list[str], module_dir: str | None, cwd: str) -> tuple[int, str, str]:
    """`modinfo FILE|NAME`: the .modinfo fields of a simulated .ko, one `key: value` line each."""
    names = [a for a in args if not a.startswith("-")]
    if len(names) != 1:
        return 1, "", "modinfo: ERROR: missing module or filename.\n"
    target = names[0]
    path = target if target.endswith(".ko") else os.path.join(module_dir or "", target.replace("-", "_") + ".ko")
    path = os.path.join(cwd, path)
    if not os.path.isfile(path):
        return 1, "", f"modinfo: ERROR: Module {target} not found.\n"
    parsed = module_util("_modinfo")
    try:
        fields, _ = parsed.read_module_file(path)
    except (OSError, parsed.ModinfoError) as exc:
        return 1, "", f"modinfo: ERROR: could not get modinfo from '{target}': {exc}\n"
    lines = [f"filename:       {os.path.abspath(path)}"]
    lines += [f"{key + ':':<16}{value}" for key, values in fields.items() for value in values]
    return 0, "\n".join(lines) + "\n", ""


def main(argv: list[str]) -> int:
    host = os.environ.get(HOST_ENV)
    if not argv or not host:
        print(f"usage: {HOST_ENV}=HOST_DIR python -m klpfleet.sim.kerneltools TOOL ARGS...", file=sys.stderr)
        return 2
    sim = module_util("_sim_kernel")
    prims = sim.SimPrimitives(host, cwd=os.getcwd())
    tool, args = os.path.basename(argv[0]), argv[1:]
    if tool in KMOD_TOOLS:
        rc, out, err = prims.run([tool, *args])
    elif tool == "dmesg":
        rc, out, err = dmesg(prims)
    elif tool == "modinfo":
        with sim.SimHost(host) as kernel:
            module_dir = kernel.s.get("module_dir")
        rc, out, err = modinfo(args, module_dir, os.getcwd())
    else:
        rc, out, err = 127, "", f"{tool}: not a simulated kernel tool\n"
    sys.stdout.write(out)
    sys.stderr.write(err)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
