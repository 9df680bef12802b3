# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""The simulated kernel's files: /sys/kernel/livepatch, /sys/module, /proc, read, listed and written the way
the kernel answers (its errnos included). `route()` turns a path into what it names, once; the table
PATCH_ATTRIBUTES says which kernels have each livepatch attribute and how it reads and writes. A mixin of
SimKernel, which provides the state (`self.s`) and the operations a write starts."""

from __future__ import annotations

import errno
import os

from ansible_collections.klpfleet.livepatch.plugins.module_utils._modinfo import BUILD_ID_SECTION, build_id_note
from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_base import (
    KernelError,
    fill,
    format_param,
    kstrtobool,
    parse_param,
)

# A patch directory's attributes: (name, first kernel with it, first kernel without it or None, how it reads,
# how it writes). "read" and "write" name SysfsView methods; None reads as EACCES / writes as EACCES.
PATCH_ATTRIBUTES = (
    ("enabled", (3, 19), None, "_read_enabled", "_write_enabled"),
    ("transition", (4, 12), None, "_read_transition", None),
    ("force", (4, 15), None, None, "_write_force"),
    ("signal", (4, 15), (5, 1), None, "_write_signal"),
    ("replace", (6, 11), None, "_read_replace", None),
    ("stack_order", (6, 13), None, "_read_stack_order", None),
)
OBJECT_PATCHED_SINCE = (6, 0)  # <patch>/<object>/patched
FTRACE_SYSCTL = "/proc/sys/kernel/ftrace_enabled"
DYNAMIC_DEBUG = "/sys/kernel/debug/dynamic_debug/control"
# The livepatch core's pr_debug sites as the control file lists them (file:line [module]function flags "format").
DEBUG_FUNCS = ("klp_init_transition", "klp_start_transition", "klp_complete_transition", "klp_try_switch_task")
DEBUG_SITE = 'kernel/livepatch/transition.c:1 [livepatch]%s =p "livepatch: debug\\012"\n'


def route(kernel, path):
    """What a path names, as a tuple whose first item is its kind: klp, patch, attribute, object, patched,
    module_dir, module_params, module_file, module_param, proc, task_dir, task_file, modules, file; or
    missing."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["sys", "kernel", "livepatch"]:  # KLP
        rest = parts[3:]
        if not rest:
            return ("klp",)
        patch = kernel.patch(rest[0])
        if patch is None:
            return ("missing",)
        if len(rest) == 1:
            return ("patch", patch)
        attribute = kernel.patch_attribute(rest[1])
        if attribute is not None and len(rest) == 2:
            return ("attribute", patch, attribute)
        obj = next((o for o in patch["objects"] if o["name"] == rest[1]), None)
        if obj is not None and len(rest) == 2:
            return ("object", patch, obj)
        if obj is not None and rest[2:] == ["patched"] and kernel.version >= OBJECT_PATCHED_SINCE:
            return ("patched", patch, obj)
        return ("missing",)
    if parts == ["sys", "module"]:
        return ("modules",)
    if parts[:2] == ["sys", "module"] and len(parts) >= 3:
        module = kernel.s["modules"].get(parts[2])
        if module is None:
            return ("file", path)  # /sys/module/module/parameters/sig_enforce and the like
        if len(parts) == 3:
            return ("module_dir", module)  # selftests wait for it to appear after a load
        if parts[3:] == ["parameters"] and module["params"]:
            return ("module_params", module)
        if len(parts) == 5 and parts[3] == "parameters" and parts[4] in module["params"]:
            return ("module_param", module, parts[4])
        if len(parts) == 4 and parts[3] in ("refcnt", "initstate", "taint"):
            return ("module_file", module, parts[3])
        if parts[3:] == ["notes", BUILD_ID_SECTION] and module.get("build_id"):
            return ("module_note", module)
        return ("missing",)
    if parts == ["proc"]:
        return ("proc",)
    if parts[0] == "proc" and len(parts) >= 3 and parts[1].isdigit():
        task = kernel.find_task(int(parts[1]))
        if task is None:
            return ("missing",)
        leaf = parts[2:]
        if leaf[:2] == ["task", str(task["pid"])]:
            leaf = leaf[2:]
        elif leaf == ["task"]:
            return ("task_dir", task)
        return ("task_file", task, leaf)
    return ("file", path)


class SysfsView(object):
    def patch_attribute(self, name):
        """The table row of an attribute this kernel has, or None."""
        for row in PATCH_ATTRIBUTES:
            attribute, since, until = row[0], row[1], row[2]
            if attribute == name and self.version >= since and (until is None or self.version < until):
                return row
        return None

    # ------------------------------------------------------------------ read

    def read(self, path):
        path = os.path.normpath(path)
        value = self._read(path)
        if value is None:
            raise KernelError(errno.ENOENT, path)
        return value

    def _read(self, path):
        if path in self.s["overrides"]:
            return self.s["overrides"][path]
        where = route(self, path)
        kind = where[0]
        if kind == "attribute":
            reader = where[2][3]
            if reader is None:
                raise KernelError(errno.EACCES)
            return getattr(self, reader)(where[1])
        if kind == "patched":
            return "%d\n" % where[2]["patched"]
        if kind == "module_file":
            module, name = where[1], where[2]
            if name == "taint":
                return module.get("taint", "") + "\n"
            return "%d\n" % module["refcnt"] if name == "refcnt" else module["state"] + "\n"
        if kind == "module_note":
            raise KernelError(errno.EINVAL, path)  # binary: read_bytes
        if kind == "module_param":
            module, name = where[1], where[2]
            return format_param(module["spec"]["params"][name].get("type", "int"), module["params"][name])
        if kind == "task_file":
            return self._read_task(where[1], where[2])
        if kind == "file":
            return self._read_file(path)
        return None

    def _read_enabled(self, patch):
        return "%d\n" % patch["enabled"]

    def _read_transition(self, patch):
        t = self.s["transition"]
        return "%d\n" % (1 if t and t["patch"] == patch["name"] else 0)

    def _read_replace(self, patch):
        return "%d\n" % patch["replace"]

    def _read_stack_order(self, patch):
        return "%d\n" % (self.s["patches"].index(patch) + 1)

    def _read_file(self, path):
        if path == "/proc/sys/kernel/osrelease":
            return self.s["kernel_release"] + "\n"
        if path == "/proc/modules":
            return self._proc_modules()
        if path == "/proc/sys/kernel/random/boot_id" and self.s.get("boot_id"):
            return self.s["boot_id"] + "\n"
        if path == "/proc/stat" and self.s.get("booted_at"):
            return "cpu  0 0 0 0 0 0 0 0 0 0\nbtime %d\n" % self.s["booted_at"]
        if path == "/proc/sys/kernel/tainted":
            return "%d\n" % self.s["taint"]
        if path == FTRACE_SYSCTL:
            return "%d\n" % self.s.get("ftrace_enabled", True)
        if path == DYNAMIC_DEBUG:
            return "".join(DEBUG_SITE % f for f in DEBUG_FUNCS if self._debug_on(f))
        if path == "/proc/cmdline":
            return self.effect(path, "BOOT_IMAGE=/boot/vmlinuz-%s root=/dev/vda ro\n" % self.s["kernel_release"])
        if path == "/proc/meminfo":
            return self.effect(path, "MemTotal:        2000000 kB\n")
        if path == "/sys/module/module/parameters/sig_enforce":
            return "Y\n" if self.s["sig_enforce"] else "N\n"
        if path == "/sys/kernel/security/lockdown":
            modes = ("none", "integrity", "confidentiality")
            return " ".join("[%s]" % m if m == self.s["lockdown"] else m for m in modes) + "\n"
        return None

    def _proc_modules(self):
        """Newest first, as the kernel lists them: name size refcnt deps state address (taint)."""
        lines = []
        loaded = [self.s["modules"][n] for n in self.s["module_order"] if n in self.s["modules"]]
        for index, module in enumerate(reversed(loaded)):
            name = module["name"]
            state = {"live": "Live", "coming": "Loading", "going": "Unloading"}[module["state"]]
            taint = " (%s)" % module["taint"] if module.get("taint") else ""
            address = 0xFFFFFFFFC0400000 - 0x10000 * index
            lines.append("%s 16384 %d - %s 0x%x%s\n" % (name, module["refcnt"], state, address, taint))
        return "".join(lines)

    def read_bytes(self, path):
        """A binary file: a module's build-id note; anything else as its text."""
        path = os.path.normpath(path)
        where = route(self, path)
        if where[0] == "module_note":
            return build_id_note(where[1]["build_id"])
        return self.read(path).encode("utf-8")

    def effect(self, path, default):
        """A patched function's visible effect (the selftests' /proc show functions)."""
        for patch in reversed(self.s["patches"]):
            effects = self.spec_of(patch).get("effects", {})
            if path in effects and any(o["patched"] for o in patch["objects"]):
                return fill(effects[path], mod=patch["name"])
        return default

    def find_task(self, pid):
        for task in self.s["tasks"]:
            if task["pid"] == pid:
                return task
        return None

    def _read_task(self, task, leaf):
        if leaf == ["patch_state"]:
            return "%d\n" % task["patch_state"]
        if leaf == ["comm"]:
            return task["comm"] + "\n"
        if leaf == ["stack"]:
            frames = task.get("stack") or []
            if task.get("sleeping_in"):
                frames = [f for f in frames if f] or [task["sleeping_in"][0].replace("*", "patched_function")]
            frames = [*frames, "kthread", "ret_from_fork"] if task.get("module") or task.get("sleeping_in") else []
            return "".join("[<0>] %s+0x%x/0x%x\n" % (f, 0x20 + 8 * i, 0x100) for i, f in enumerate(frames))
        return None

    # ------------------------------------------------------------------ list

    def listdir(self, path):
        path = os.path.normpath(path)
        where = route(self, path)
        kind = where[0]
        if kind == "klp":
            if not self.s["livepatch"]:
                raise KernelError(errno.ENOENT, path)
            return sorted(p["name"] for p in self.s["patches"])
        if kind == "patch":
            attributes = [row[0] for row in PATCH_ATTRIBUTES if self.patch_attribute(row[0])]
            return sorted(attributes + [o["name"] for o in where[1]["objects"]])
        if kind == "object":
            names = ["%s,1" % f for f in where[2]["funcs"]]
            if self.version >= OBJECT_PATCHED_SINCE:
                names.append("patched")
            return sorted(names)
        if kind == "modules":
            return sorted(self.s["modules"])
        if kind == "module_dir":
            module = where[1]
            names = ["initstate", "refcnt", "taint"]
            names += ["parameters"] if module["params"] else []
            return sorted(names)
        if kind == "module_params":
            return sorted(where[1]["params"])
        if kind == "proc":
            return sorted(str(t["pid"]) for t in self.s["tasks"])
        if kind == "task_dir":
            return [str(where[1]["pid"])]
        raise KernelError(errno.ENOENT, path)

    def exists(self, path):
        path = os.path.normpath(path)
        try:
            self.listdir(path)
            return True
        except OSError:
            pass
        try:
            return self._read(path) is not None
        except OSError:
            return True  # exists but unreadable (force)

    def is_dir(self, path):
        try:
            self.listdir(os.path.normpath(path))
            return True
        except OSError:
            return False

    # ------------------------------------------------------------------ write

    def write(self, path, data):
        path = os.path.normpath(path)
        where = route(self, path)
        kind = where[0]
        if kind == "attribute":
            writer = where[2][4]
            if writer is None:
                raise KernelError(errno.EACCES, path)
            return getattr(self, writer)(where[1], data)
        if kind == "module_param":
            module, name = where[1], where[2]
            pspec = module["spec"]["params"][name]
            if "w" not in pspec.get("perm", "rw"):
                raise KernelError(errno.EACCES, path)
            try:
                module["params"][name] = parse_param(pspec.get("type", "int"), data.strip())
            except ValueError:
                raise KernelError(errno.EINVAL, path) from None
            return None
        if path == FTRACE_SYSCTL:
            return self._write_sysctl_ftrace(data)
        if path == DYNAMIC_DEBUG:
            return self._write_dynamic_debug(data)
        if kind in ("patched", "module_file", "task_file", "file") and self.exists(path):
            raise KernelError(errno.EACCES, path)
        raise KernelError(errno.ENOENT, path)

    def _write_sysctl_ftrace(self, data):
        """ftrace_enabled cannot be switched off while a livepatch hooks a function (its ftrace ops are
        permanent): EBUSY, as sysctl reports it."""
        try:
            value = int(data.strip(), 0)
        except ValueError:
            raise KernelError(errno.EINVAL, FTRACE_SYSCTL) from None
        hooked = any(o["patched"] for p in self.s["patches"] for o in p["objects"])
        if not value and hooked:
            raise KernelError(errno.EBUSY, FTRACE_SYSCTL)
        self.s["ftrace_enabled"] = bool(value)

    def _debug_on(self, func):
        on = self.s["debug"]
        return on.get("livepatch") and (func != "klp_try_switch_task" or on.get("try_switch"))

    def _write_dynamic_debug(self, data):
        """The queries the selftests write: `file kernel/livepatch/* +p`, `func klp_try_switch_task -p`, and
        their own saved sites back (`file kernel/livepatch/... line N =p`)."""
        for query in data.splitlines():
            words = query.split()
            if not words:
                continue
            flags = words[-1]
            if len(words) < 3 or flags[:1] not in "+-=" or "p" not in flags:
                raise KernelError(errno.EINVAL, DYNAMIC_DEBUG)
            on = flags[0] != "-"
            if words[:2] == ["func", "klp_try_switch_task"]:
                self.s["debug"]["try_switch"] = on
            elif words[0] == "file" and words[1].startswith("kernel/livepatch/"):
                self.s["debug"]["livepatch"] = on
                if on and words[1] == "kernel/livepatch/*":
                    self.s["debug"]["try_switch"] = True

    def mode(self, path):
        """The file's mode bits as the kernel shows them (the selftests check some), or None if it is absent."""
        path = os.path.normpath(path)
        if self.is_dir(path):
            return 0o755
        if not self.exists(path):
            return None
        where = route(self, path)
        if where[0] == "attribute":
            row = where[2]
            return (0o444 if row[3] else 0) | (0o200 if row[4] else 0)
        if where[0] == "module_param":
            return 0o644 if "w" in where[1]["spec"]["params"][where[2]].get("perm", "rw") else 0o444
        if path in (FTRACE_SYSCTL, DYNAMIC_DEBUG):
            return 0o644
        return 0o444

    def _write_enabled(self, patch, data):
        enabled = kstrtobool(data)
        if patch["enabled"] == enabled:
            raise KernelError(errno.EINVAL)
        t = self.s["transition"]
        if t is not None and t["patch"] == patch["name"]:
            self.reverse_transition(patch)
        elif not enabled:
            self.disable_patch(patch)
        elif not self.modern_lifecycle:
            self.legacy_enable(patch)  # before 5.1 a disabled patch stays registered and can be enabled again
        else:
            raise KernelError(errno.EINVAL)

    def _write_force(self, patch, data):
        if not kstrtobool(data):
            return
        t = self.s["transition"]
        if t is None or t["patch"] != patch["name"]:
            raise KernelError(errno.EINVAL)
        self.force_transition(patch)

    def _write_signal(self, patch, data):
        kstrtobool(data)
        if self.s["transition"] is not None:
            self.signal_tasks()
