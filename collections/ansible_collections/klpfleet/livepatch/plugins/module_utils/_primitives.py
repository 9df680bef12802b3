# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""The lowest layer of host access: the only code that differs between a real and a simulated kernel.

Everything a livepatch operation needs from a host goes through these calls: read, write and list
paths under /sys and /proc, run kmod's tools, read and write the kernel log, and the clock. Errors
are the kernel's: OSError with its errno from read/write, (rc, stdout, stderr) from the tools.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import subprocess
import sys
import time

KMSG = "/dev/kmsg"
TOOLS = ("insmod", "rmmod", "modprobe")


def c_locale_env():
    env = dict(os.environ)
    env.update(LC_ALL="C", LANG="C", LANGUAGE="C")
    return env


class RealPrimitives(object):
    """A real Linux host: the filesystem, kmod's tools and /dev/kmsg."""

    backend = "sysfs"

    def __init__(self, run_command=None, tool_paths=None):
        # run_command(argv) -> (rc, stdout, stderr); an Ansible module passes its own so commands are
        # logged and run the Ansible way. Always argv lists, never a shell.
        self._run_command = run_command or self._subprocess
        self._tool_paths = tool_paths or {}

    @staticmethod
    def _subprocess(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, env=c_locale_env(), check=False)  # noqa: S603 - argv list, kmod tools only
        return proc.returncode, proc.stdout, proc.stderr

    def read(self, path):
        with open(path) as f:
            return f.read()

    def read_bytes(self, path, limit=1 << 16):
        with open(path, "rb") as f:
            return f.read(limit)

    def write(self, path, data):
        with open(path, "w") as f:
            f.write(data)

    def listdir(self, path):
        return sorted(os.listdir(path))

    def exists(self, path):
        return os.path.exists(path)

    def is_dir(self, path):
        return os.path.isdir(path)

    def run(self, argv):
        if argv[0] not in TOOLS:
            raise ValueError("only %s may be run on a host" % ", ".join(TOOLS))
        tool = self._tool_paths.get(argv[0]) or argv[0]
        return self._run_command([tool, *list(argv[1:])])

    # Kernel log: records of /dev/kmsg are "prio,seq,usec,flags;text"; the cursor is a sequence number.
    # Returns ([(seq, seconds since boot, text)], last seq).
    # `log_error` says why the log could not be read (dmesg_restrict without CAP_SYSLOG, a container, an LSM);
    # `log_wrapped` that the ring buffer had already dropped records the caller asked for.
    log_error = None
    log_wrapped = False

    def read_log(self, cursor=-1):
        records = []
        last = cursor
        try:
            fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            self.log_error = "%s: %s" % (KMSG, exc.strerror)
            return records, last
        self.log_error = None
        first = True
        try:
            while True:
                try:
                    raw = os.read(fd, 8192)
                except OSError as exc:
                    if exc.errno == errno.EPIPE:  # the ring buffer overwrote records: skip ahead
                        self.log_wrapped = True
                        continue
                    if exc.errno in (errno.EPERM, errno.EACCES):
                        self.log_error = "%s: %s" % (KMSG, exc.strerror)
                        break
                    if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                        break
                    raise
                if not raw:
                    break
                header, _dummy, text = raw.decode("utf-8", "replace").partition(";")
                parts = header.split(",")
                try:
                    seq, usec = int(parts[1]), int(parts[2])
                except (IndexError, ValueError):
                    continue
                text = text.split("\n", 1)[0]
                if first:
                    # Records start at 0 after boot; a later first one means the ring buffer wrapped past
                    # records this call wanted.
                    self.log_wrapped = self.log_wrapped or seq > cursor + 1
                    first = False
                if seq > cursor:
                    records.append((seq, usec / 1e6, text))
                last = max(last, seq)
        finally:
            os.close(fd)
        return records, last

    def log_cursor(self):
        return self.read_log(-1)[1]

    def log_write(self, text):
        fd = os.open(KMSG, os.O_WRONLY)
        try:
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)

    def now(self):
        return time.monotonic()

    def sleep(self, seconds):
        time.sleep(seconds)


def simulated_kernel(path=None):
    """The simulated kernel's code. Nothing here imports it by name, so Ansible never bundles it into what a
    module sends to a host: a module for a simulated host is given its file's path (the action plugin does
    that), and code that runs beside the collection (the simulator, the probe, tests) imports it."""
    package = __name__.rsplit(".", 1)[0]
    if not path:
        return importlib.import_module(package + "._sim_kernel")
    for sibling in SIM_KERNEL_IMPORTS:  # the module's payload may lack them: they sit beside the file
        name = package + "." + sibling
        try:
            importlib.import_module(name)
        except ImportError:
            _load_file(name, os.path.join(os.path.dirname(path), sibling + ".py"))
    return _load_file("klpfleet_simulated_kernel", path)


# What _sim_kernel imports from this package.
SIM_KERNEL_IMPORTS = ("_modinfo", "_sim_base", "_sim_kmod", "_sim_shadow", "_sim_sysfs")


def _load_file(name, path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def primitives_for(backend, sim_root=None, run_command=None, tool_paths=None, read_only=False, sim_kernel=None):
    """The primitives for a host: `sysfs` (a real kernel) or `sim` (a simulated one kept in sim_root).
    `read_only` callers (patch_info, the probe) get a simulated host's state loaded once."""
    if backend == "sim":
        if not sim_root:
            raise ValueError("the sim backend needs sim_root (host var klp_sim_root)")
        sim = simulated_kernel(sim_kernel)
        return sim.SimSnapshot(sim_root) if read_only else sim.SimPrimitives(sim_root)
    if backend != "sysfs":
        raise ValueError("unknown backend %r: sysfs or sim" % (backend,))
    return RealPrimitives(run_command=run_command, tool_paths=tool_paths)
