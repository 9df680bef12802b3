"""A simulated host's kernel files as a real filesystem (FUSE), so that programs which know nothing of klpfleet,
the kernel's own selftest scripts first, can read and write them with `cat`, `echo >`, `[[ -e ]]` and `stat`.

The mount holds `sys/` (the whole simulated /sys), `proc/` (the files the model answers: cmdline, meminfo,
modules, sys/kernel/ftrace_enabled ...) and `dev/kmsg` (a write appends a kernel log record). Every operation
goes to the simulated kernel under its lock, so a write fails with the kernel's errno and a read shows the state
of that moment, as sysfs does. Run as `python -m klpfleet.sim.kernelfs HOST_DIR MOUNTPOINT` (root: it mounts);
it serves in the foreground until unmounted or killed.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from typing import Any

from klpfleet.collection import module_util

# The /proc files a simulated kernel answers; the runner binds each over the real one.
PROC_FILES = (
    "cmdline",
    "meminfo",
    "modules",
    "stat",
    "sys/kernel/ftrace_enabled",
    "sys/kernel/tainted",
    "sys/kernel/osrelease",
    "sys/kernel/random/boot_id",
)
MAX_WRITE = 64 * 1024  # a sysfs store takes one page; the selftests write a line


def _proc_dirs() -> set[str]:
    dirs = {"/proc"}
    for rel in PROC_FILES:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/proc/" + "/".join(parts[:i]))
    return dirs


PROC_DIRS = _proc_dirs()
# Directories of /sys the model does not list itself (it answers for the files in them).
SYS_DIRS = {
    "/sys": ["kernel", "module"],
    "/sys/kernel": ["debug", "livepatch"],
    "/sys/kernel/debug": ["dynamic_debug"],
    "/sys/kernel/debug/dynamic_debug": ["control"],
}


def make_operations(host_dir: str) -> Any:
    import mfusepy as fuse

    sim = module_util("_sim_kernel")

    class KernelFS(fuse.Operations):
        use_ns = True

        def __init__(self) -> None:
            self.contents: dict[int, bytes] = {}
            self.next_fh = 1
            self.started = time.time_ns()

        def _kernel(self) -> Any:
            return sim.SimHost(host_dir)

        def _fail(self, exc: OSError) -> Any:
            return fuse.FuseOSError(exc.errno or errno.EIO)

        def _kind(self, path: str) -> tuple[str, int]:
            """(dir|file|kmsg, mode) for a path of the mount; ENOENT when the kernel has no such file."""
            if path in ("/", "/dev") or path in PROC_DIRS or path in SYS_DIRS:
                return "dir", 0o755
            if path == "/dev/kmsg":
                return "kmsg", 0o644
            if path.startswith("/proc/") and path[len("/proc/") :] not in PROC_FILES:
                raise fuse.FuseOSError(errno.ENOENT)
            if not path.startswith(("/sys/", "/proc/")):
                raise fuse.FuseOSError(errno.ENOENT)
            with self._kernel() as kernel:
                mode = kernel.mode(path)
                is_dir = mode is not None and kernel.is_dir(path)
            if mode is None:
                raise fuse.FuseOSError(errno.ENOENT)
            return ("dir" if is_dir else "file"), mode

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            kind, mode = self._kind(path)
            kind_bits = stat.S_IFDIR if kind == "dir" else stat.S_IFREG
            return {
                "st_mode": kind_bits | mode,
                "st_nlink": 2 if kind == "dir" else 1,
                "st_size": 0 if kind == "dir" else 4096,  # sysfs' answer: the size is not known before a read
                "st_uid": 0,
                "st_gid": 0,
                "st_atime": self.started,
                "st_mtime": self.started,
                "st_ctime": self.started,
            }

        def readdir(self, path: str, fh: int) -> list[str]:
            if path == "/":
                return [".", "..", "sys", "proc", "dev"]
            if path == "/dev":
                return [".", "..", "kmsg"]
            if path in PROC_DIRS:
                prefix = path[len("/proc") :].strip("/")
                prefix = prefix + "/" if prefix else ""
                names = {r[len(prefix) :].split("/")[0] for r in PROC_FILES if r.startswith(prefix)}
                return [".", "..", *sorted(names)]
            if path in SYS_DIRS:
                return [".", "..", *SYS_DIRS[path]]
            try:
                with self._kernel() as kernel:
                    entries = kernel.listdir(path)
            except OSError as exc:
                raise self._fail(exc) from None
            return [".", "..", *entries]

        def open(self, path: str, flags: int) -> int:
            kind, _ = self._kind(path)
            if kind == "dir":
                raise fuse.FuseOSError(errno.EISDIR)
            self.next_fh += 1  # one request at a time (nothreads): no lock needed
            return self.next_fh

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            if path == "/dev/kmsg":
                raise fuse.FuseOSError(errno.EINVAL)  # records are read with dmesg (the runner's tool)
            content = self.contents.get(fh)
            if content is None:  # sysfs produces the text at the first read of an open file
                try:
                    with self._kernel() as kernel:
                        content = kernel.read(path).encode()
                except OSError as exc:
                    raise self._fail(exc) from None
                self.contents[fh] = content
            return content[offset : offset + size]

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            if len(data) > MAX_WRITE:
                raise fuse.FuseOSError(errno.EINVAL)
            text = data.decode(errors="replace")
            try:
                if path == "/dev/kmsg":
                    sim.SimPrimitives(host_dir).log_write(text)
                else:
                    with self._kernel() as kernel:
                        kernel.write(path, text)
            except OSError as exc:
                raise self._fail(exc) from None
            return len(data)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            self._kind(path)  # `echo 1 > file` opens with O_TRUNC: sysfs ignores it
            return 0

        def release(self, path: str, fh: int) -> int:
            self.contents.pop(fh, None)
            return 0

    return KernelFS()


def serve(host_dir: str, mountpoint: str) -> None:
    import mfusepy as fuse

    fuse.FUSE(make_operations(host_dir), mountpoint, foreground=True, direct_io=True, allow_other=True, nothreads=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not os.path.isdir(argv[1]):
        print("usage: python -m klpfleet.sim.kernelfs HOST_DIR MOUNTPOINT", file=sys.stderr)
        return 2
    serve(argv[0], argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
