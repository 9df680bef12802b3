# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""A simulated Linux kernel with livepatch, as klpfleet's docs/kernel.md describes it.

The model answers the same primitive calls as a real host (sysfs/procfs reads and writes with the
kernel's errno, kmod's tools with their exact stderr and exit status, /dev/kmsg, the clock). Its whole
state is one JSON document per host, kept in `sim_root`, so every process that touches the host (an
Ansible module, the probe, a test) sees the same kernel.

Time: the kernel clock advances with wall time times `speed` (0 freezes it), and by every `sleep()`,
which returns at once. Transitions retry on each whole second of kernel time, so a 60 s timeout or a
15-retry signal costs microseconds of real time.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import os
import time
import uuid

from ansible_collections.klpfleet.livepatch.plugins.module_utils._modinfo import (
    BUILD_ID_SECTION,
    ModinfoError,
    build_id_from_note,
    first,
    read_module_file,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_base import (
    DEFAULT_KERNEL_RELEASE,
    LOG_LIMIT,
    MODERN_LIFECYCLE_SINCE,
    MODULE_STATES,
    SELECTIVE_FORCE_SINCE,
    SPEC_SECTION,
    STATE_FILE,
    SYSTEM_STATES_SINCE,
    TAINT_LIVEPATCH,
    TAINT_OOT,
    TAINT_UNSIGNED,
    TRY_SWITCH_WORDING_SINCE,
    KernelError,
    errno_value,
    fill,
    parse_param,
    release_version,
    vermagic_for,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kmod import KmodTools
from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_shadow import run_shadow_program
from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_sysfs import SysfsView


def new_kernel(kernel_release=DEFAULT_KERNEL_RELEASE, **options):
    """A freshly booted kernel's state: the one JSON document a simulated host is.

    kernel_release, livepatch (CONFIG_LIVEPATCH), module_sig / sig_enforce / lockdown: the build and boot.
    clock, wall, speed, next_tick: kernel time (see the module docstring). seq, log: the kernel log records
    (seq, seconds, text), LOG_LIMIT kept. taint, taint_logged: /proc/sys/kernel/tainted and its lines.
    modules: name -> {name, spec, params, refcnt, state, modinfo_livepatch, path}, in load order
    (module_order). patches: the klp_patches in enable order, each {name, module, enabled, forced, replace,
    states, objects: [{name, funcs, patched, post_unpatch_enabled}]}.
    transition: null or {patch, target (1 patching, 0 unpatching), attempts, signaled}. tasks: every task,
    {pid, comm, patch_state, sleeping_in, until, ignores_signal, module, log_exit, stack}
    (add_sleeping_task). ftrace_enabled: the sysctl (off, no patch can hook a function; a patched function
    keeps it on). faults: what the host refuses or stalls on (klpfleet sim host create). overrides:
    path -> text read instead of the model (tests of odd hosts).
    """
    state = {
        "format": 1,
        "kernel_release": kernel_release,
        "livepatch": True,
        "module_sig": True,  # CONFIG_MODULE_SIG: unsigned modules taint E
        "sig_enforce": False,
        "lockdown": "none",  # none | integrity | confidentiality
        "speed": 1.0,
        "clock": 5.0,  # seconds since boot
        "wall": time.time(),
        "boot_id": str(uuid.uuid4()),  # /proc/sys/kernel/random/boot_id
        "booted_at": int(time.time() - 5.0),  # /proc/stat btime
        "next_tick": 6.0,
        "seq": 0,
        "log": [],
        "debug": {"livepatch": False, "try_switch": False},
        "ftrace_enabled": True,  # the kernel.ftrace_enabled sysctl
        "taint": 0,
        "taint_logged": [],
        "modules": {},  # name -> loaded module, in load order
        "module_order": [],
        "patches": [],  # klp_patches: enabled or in transition, in enable order
        "transition": None,
        "tasks": [
            {"pid": 1, "comm": "init", "patch_state": -1},
            {"pid": 2, "comm": "kthreadd", "patch_state": -1},
            {"pid": 120, "comm": "sshd", "patch_state": -1},
        ],
        "next_pid": 1000,
        "faults": {},
        "module_dir": None,  # where modprobe finds modules by name
        "overrides": {},
    }
    state.update(options)
    return state


# What a host keeps across a reboot: how its kernel was built and booted, its faults, and what it runs at boot
# (`boot`: {stalls, modules}, replayed by klpfleet.sim.fleet). Everything else starts afresh.
KEPT_AT_REBOOT = (
    "livepatch",
    "module_sig",
    "sig_enforce",
    "lockdown",
    "speed",
    "debug",
    "faults",
    "module_dir",
    "overrides",
    "boot",
)


def rebooted(state, kernel_release=None):
    """The state of the same host after a reboot into kernel_release (default: the release it ran)."""
    kept = dict((k, state[k]) for k in KEPT_AT_REBOOT if k in state)
    return new_kernel(kernel_release or state["kernel_release"], **kept)


UNKNOWN_VERSION = "*"  # a task of a state written before tasks recorded the code they run: it blocks any version


def patches_function(patch, func):
    return any(func in obj["funcs"] for obj in patch["objects"])


class SimKernel(KmodTools, SysfsView):
    """The model. Every public method is one thing user space can do to a kernel."""

    def __init__(self, state):
        self.s = state

    # ------------------------------------------------------------------ clock and log

    def sync_wall_clock(self):
        now = time.time()
        elapsed = max(0.0, now - self.s.get("wall", now))
        self.s["wall"] = now
        if self.s.get("speed", 1.0) > 0 and elapsed > 0:
            self.advance(elapsed * self.s["speed"])

    def advance(self, seconds):
        """Let kernel time pass: transitions retry on each whole second, as klp_transition_work does."""
        target = self.s["clock"] + max(0.0, seconds)
        while self.s["transition"] is not None and self.s["next_tick"] <= target:
            self.s["clock"] = self.s["next_tick"]
            self.s["next_tick"] += 1.0
            self._expire_tasks()
            self._retry_transition()
        self.s["clock"] = target
        self._expire_tasks()
        if self.s["transition"] is None:
            self.s["next_tick"] = float(int(target) + 1)

    def log(self, text):
        self.s["seq"] += 1
        self.s["log"].append([self.s["seq"], round(self.s["clock"], 6), text])
        if len(self.s["log"]) > LOG_LIMIT:
            del self.s["log"][: len(self.s["log"]) - LOG_LIMIT]

    def klp(self, text):
        self.log("livepatch: " + text)

    def klp_debug(self, text):
        if self.s["debug"].get("livepatch"):
            self.klp(text)

    def read_log(self, cursor=-1):
        records = [(seq, ts, text) for seq, ts, text in self.s["log"] if seq > cursor]
        return records, self.s["seq"]

    def log_access(self, cursor):
        """(log_error, log_wrapped) for a reader asking from cursor: a host may refuse its log (fault
        log_unreadable, like dmesg_restrict without CAP_SYSLOG), and the ring keeps LOG_LIMIT records."""
        if self.s["faults"].get("log_unreadable"):
            return "/dev/kmsg: Operation not permitted", False
        oldest = self.s["log"][0][0] if self.s["log"] else self.s["seq"] + 1
        return None, oldest > max(cursor + 1, 1)  # the simulated kernel numbers records from 1

    # ------------------------------------------------------------------ lookups

    @property
    def version(self):
        return release_version(self.s["kernel_release"])

    @property
    def modern_lifecycle(self):
        """5.1+: disabled patches are freed, any patch can be disabled, the kernel signals stalled tasks."""
        return self.version >= MODERN_LIFECYCLE_SINCE

    def patch(self, name):
        for p in self.s["patches"]:
            if p["name"] == name:
                return p
        return None

    def transition_patch(self):
        t = self.s["transition"]
        return self.patch(t["patch"]) if t else None

    def module_loaded(self, name):
        m = self.s["modules"].get(name)
        return m is not None and m["state"] in ("live", "coming", "going")

    def object_loaded(self, obj):
        if obj["name"] == "vmlinux":
            return True
        m = self.s["modules"].get(obj["name"])
        return m is not None and m["state"] in ("live", "coming")

    def obj_label(self, obj):
        if obj["name"] == "vmlinux":
            return "vmlinux"
        m = self.s["modules"].get(obj["name"])
        return "%s -> %s" % (obj["name"], MODULE_STATES[m["state"] if m else "live"])

    def spec_of(self, patch):
        return self.s["modules"][patch["module"]]["spec"]

    def obj_spec(self, patch, obj):
        for o in self.spec_of(patch).get("objects", []):
            if o["name"] == obj["name"]:
                return o
        return {}

    def param(self, module_name, param):
        m = self.s["modules"].get(module_name)
        if m is None:
            return None
        return m["params"].get(param)

    # ------------------------------------------------------------------ callbacks

    def prev_state_holder(self, patch, state_id):
        """klp_get_prev_state(): a patch installed before this one that holds the state."""
        for p in self.s["patches"]:
            if p is patch or p["name"] == patch["name"]:
                return None
            if any(st["id"] == state_id for st in p["states"]):
                return p
        return None

    def run_callback(self, patch, obj, which):
        """Log a callback's lines; return what it returns (only pre_patch returns anything)."""
        spec = self.spec_of(patch)
        cb = self.obj_spec(patch, obj).get("callbacks", {}).get(which)
        ret = 0
        if cb:
            lines = cb.get("log", [])
            state_id = cb.get("prev_state")
            if state_id is not None and cb.get("log_prev") is not None and self.prev_state_holder(patch, state_id):
                lines = cb["log_prev"]
            for line in lines:
                self.log(fill(line, mod=spec["name"], obj=self.obj_label(obj), cb=which))
            ret = self.resolve(patch["module"], cb.get("ret", 0))
        if which == "pre_patch" and not ret:
            ret = self.fault_refusal(patch, obj)
        return ret

    def resolve(self, module_name, value):
        if isinstance(value, str) and value.startswith("param:"):
            value = self.param(module_name, value[6:])
        try:
            return int(value or 0)
        except (TypeError, ValueError):
            return 0

    def fault_refusal(self, patch, obj):
        for fault in self.s["faults"].get("refuse", []):
            if fnmatch.fnmatchcase(patch["name"], fault.get("patch", "*")) and fnmatch.fnmatchcase(
                obj["name"], fault.get("object", "*")
            ):
                return -errno_value(fault.get("errno", "ENODEV"))
        return 0

    def pre_patch(self, patch, obj):
        ret = self.run_callback(patch, obj, "pre_patch")
        if not ret:
            obj["post_unpatch_enabled"] = True
        return ret

    def post_patch(self, patch, obj):
        self.run_callback(patch, obj, "post_patch")

    def pre_unpatch(self, patch, obj):
        self.run_callback(patch, obj, "pre_unpatch")

    def post_unpatch(self, patch, obj):
        if obj.get("post_unpatch_enabled"):
            self.run_callback(patch, obj, "post_unpatch")
        obj["post_unpatch_enabled"] = False

    def hook(self, patch, obj):
        """klp_patch_object(): fails when ftrace is switched off (kernel.ftrace_enabled = 0) or by a fault
        (another ftrace user holds the function)."""
        if not self.s.get("ftrace_enabled", True) and obj["funcs"]:
            self.klp("failed to register ftrace handler for function '%s' (-16)" % obj["funcs"][0])
            return -errno.EBUSY
        for fault in self.s["faults"].get("ftrace_busy", []):
            for func in obj["funcs"]:
                if fnmatch.fnmatchcase(func, fault.get("function", "*")):
                    self.klp("failed to register ftrace handler for function '%s' (-16)" % func)
                    return -errno.EBUSY
        obj["patched"] = True
        return 0

    # ------------------------------------------------------------------ transitions

    def start_transition(self, patch, target):
        self.s["transition"] = {"patch": patch["name"], "target": target, "attempts": 0, "signaled": False}
        for task in self.s["tasks"]:
            task["patch_state"] = 1 - target
        self.klp("'%s': starting %s transition" % (patch["name"], "patching" if target else "unpatching"))
        self.s["next_tick"] = float(int(self.s["clock"]) + 1)

    def transition_funcs(self):
        patch = self.transition_patch()
        funcs = set()
        for obj in patch["objects"]:
            if self.object_loaded(obj):
                funcs.update(obj["funcs"])
        return funcs

    def blocking_function(self, task, funcs):
        """The function a sleeping task blocks the transition in: the kernel looks on each stack for the version
        of the function being switched away from (klp_check_stack_func): patching, the version the patch
        replaces; unpatching, the patch's own. A task sleeping in another version (the original code, after a
        forced patching transition) blocks nothing."""
        sleeping = task.get("sleeping_in")
        if not sleeping:
            return None
        t = self.s["transition"]
        patch = self.transition_patch()
        for func in sorted(funcs):
            if any(fnmatch.fnmatchcase(func, pattern) for pattern in sleeping):
                checked = patch["name"] if t["target"] == 0 else self.version_below(func, patch)
                if self.task_version(task, func) in (checked, UNKNOWN_VERSION):
                    return func
        return None

    def patches_in_effect(self):
        """The patches whose code a task born now runs: the enabled ones, the one in transition only if it is
        being unpatched (a new task starts unswitched, like its parent)."""
        t = self.s["transition"]
        names = []
        for p in self.s["patches"]:
            if t is not None and t["patch"] == p["name"]:
                if t["target"] == 0:
                    names.append(p["name"])
            elif p["enabled"]:
                names.append(p["name"])
        return names

    def version_below(self, func, patch):
        """The version of func in effect under `patch`: the newest earlier patch that patches it, else None (the
        original)."""
        below = self.s["patches"][: self.s["patches"].index(patch)]
        return next((p["name"] for p in reversed(below) if patches_function(p, func)), None)

    def task_version(self, task, func):
        """Which version of func a sleeping task runs: it entered the function before it slept, so the version in
        effect when it started (tasks from before this model could be in any)."""
        runs = task.get("runs")
        if runs is None:
            return UNKNOWN_VERSION
        return next(
            (p["name"] for p in reversed(self.s["patches"]) if p["name"] in runs and patches_function(p, func)), None
        )

    def try_complete(self):
        t = self.s["transition"]
        funcs = self.transition_funcs()
        stalled = []
        for task in self.s["tasks"]:
            if task["patch_state"] == t["target"]:
                continue
            func = self.blocking_function(task, funcs)
            if func is None:
                task["patch_state"] = t["target"]
            else:
                stalled.append((task, func))
        if stalled:
            if self.s["debug"].get("try_switch"):
                for task, func in stalled:
                    where = "klp_try_switch_task" if self.version >= TRY_SWITCH_WORDING_SINCE else "klp_check_stack"
                    self.klp("%s: %s:%d is sleeping on function %s" % (where, task["comm"], task["pid"], func))
            return False
        self.complete_transition()
        return True

    def _retry_transition(self):
        t = self.s["transition"]
        if t is None:
            return
        if t.get("forced"):
            self.complete_transition()
            return
        t["attempts"] += 1
        if self.try_complete():
            return
        if t["attempts"] % 15 == 0 and self.modern_lifecycle:
            self.signal_tasks()  # before 5.1 only a write to the patch's `signal` file does

    def signal_tasks(self):
        t = self.s["transition"]
        if not t["signaled"]:
            self.klp("signaling remaining tasks")
            t["signaled"] = True
        for task in self.s["tasks"]:
            if task["patch_state"] != t["target"] and task.get("sleeping_in") and not task.get("ignores_signal"):
                task["sleeping_in"] = None  # the fake signal woke it; it leaves the patched function

    def _expire_tasks(self):
        now = self.s["clock"]
        for task in self.s["tasks"]:
            until = task.get("until")
            if task.get("sleeping_in") and until is not None and now >= until:
                task["sleeping_in"] = None

    def complete_transition(self):
        t = self.s["transition"]
        patch = self.transition_patch()
        target = t["target"]
        self.klp_debug("'%s': completing %s transition" % (patch["name"], "patching" if target else "unpatching"))
        replaced = []
        if target == 1 and patch["replace"]:
            # Replaced patches are unpatched now but freed only after the callbacks below, so
            # klp_get_prev_state() still finds their states during post_patch. No lines, no callbacks.
            replaced = [p for p in self.s["patches"] if p is not patch]
            for old in replaced:
                for obj in old["objects"]:
                    obj["patched"] = False
        if target == 0:
            for obj in patch["objects"]:
                obj["patched"] = False
        for task in self.s["tasks"]:
            task["patch_state"] = -1
        for obj in patch["objects"]:
            if not self.object_loaded(obj):
                continue
            if target == 1:
                self.post_patch(patch, obj)
            else:
                self.post_unpatch(patch, obj)
        self.klp("'%s': %s complete" % (patch["name"], "patching" if target else "unpatching"))
        self.s["transition"] = None
        if not patch["enabled"]:
            if self.modern_lifecycle:
                self.free_patch(patch)
            else:
                self.put_patch_module(patch)  # stays registered, its directory too, until rmmod
        for old in replaced:
            self.free_patch(old)

    def free_patch(self, patch):
        self.s["patches"] = [p for p in self.s["patches"] if p is not patch]
        self.put_patch_module(patch)

    def put_patch_module(self, patch):
        """module_put() of the patch's module, never done for a patch a force pinned."""
        module = self.s["modules"].get(patch["module"])
        if module is not None and not patch.get("forced") and not self.s.get("forced_all_until_reboot"):
            module["refcnt"] = max(0, module["refcnt"] - 1)

    # ------------------------------------------------------------------ enable / disable

    def states_compatible(self, spec):
        if self.version < SYSTEM_STATES_SINCE:
            return True
        new_states = {st["id"]: st["version"] for st in spec.get("states", [])}
        for old in self.s["patches"]:
            for st in old["states"]:
                if st["id"] not in new_states:
                    if self.patch_replace(spec):
                        return False
                elif new_states[st["id"]] < st["version"]:
                    return False
        return True

    def patch_replace(self, spec, module_name=None):
        if not self.modern_lifecycle:
            return False  # atomic replace came with 5.1
        value = spec.get("replace", False)
        if isinstance(value, str) and value.startswith("param:"):
            return bool(self.resolve(module_name or spec["name"], value))
        return bool(value)

    def klp_enable_patch(self, module):
        spec = module["spec"]
        name = spec["name"]
        if not module["modinfo_livepatch"]:
            self.klp("module %s is not marked as a livepatch module" % name)
            return -errno.EINVAL
        if not self.s["livepatch"]:
            return -errno.ENODEV
        if not self.states_compatible(spec):
            self.klp("Livepatch patch (%s) is not compatible with the already installed livepatches." % name)
            return -errno.EINVAL
        patch = {
            "name": name,
            "module": name,
            "enabled": False,
            "forced": False,
            "replace": self.patch_replace(spec, name),
            "states": [dict(st) for st in spec.get("states", [])],
            "objects": [
                {"name": o["name"], "funcs": list(o.get("funcs", [])), "patched": False, "post_unpatch_enabled": False}
                for o in spec.get("objects", [])
            ],
        }
        if self.s["transition"] is not None:
            return -errno.EBUSY  # another transition: refused with no log line
        self.s["patches"].append(patch)
        return self.enable_registered(patch)

    def enable_registered(self, patch):
        """__klp_enable_patch(): take the module reference, run pre_patch and hook every loaded object, start
        the patching transition. Before 5.1 a write of 1 to a disabled (still registered) patch does this too."""
        name = patch["name"]
        self.s["modules"][patch["module"]]["refcnt"] += 1
        self.klp("enabling patch '%s'" % name)
        self.klp_debug("'%s': initializing patching transition" % name)
        for obj in patch["objects"]:
            if not self.object_loaded(obj):
                continue
            ret = self.pre_patch(patch, obj)
            if ret:
                self.klp("pre-patch callback failed for object '%s'" % obj["name"])
                return self.cancel_enable(patch, ret)
            ret = self.hook(patch, obj)
            if ret:
                self.klp("failed to patch object '%s'" % obj["name"])
                return self.cancel_enable(patch, ret)
        self.start_transition(patch, 1)
        patch["enabled"] = True
        self.try_complete()
        return 0

    def cancel_enable(self, patch, ret):
        self.klp("failed to enable patch '%s'" % patch["name"])
        self.klp_debug("'%s': canceling patching transition, going to unpatch" % patch["name"])
        self.s["transition"] = {"patch": patch["name"], "target": 0, "attempts": 0, "signaled": False}
        self.complete_transition()  # patch["enabled"] is False: it is freed
        if patch in self.s["patches"]:  # before 5.1 it stayed registered; the module's init fails and unregisters it
            self.s["patches"] = [p for p in self.s["patches"] if p is not patch]
        return ret

    def legacy_enable(self, patch):
        """Before 5.1: writing 1 to a disabled, registered patch enables it again, if the one below it is enabled."""
        if self.s["transition"] is not None:
            raise KernelError(errno.EBUSY)
        below = self.s["patches"][: self.s["patches"].index(patch)]
        if below and not below[-1]["enabled"]:
            raise KernelError(errno.EBUSY)
        ret = self.enable_registered(patch)
        if ret:
            raise KernelError(-ret)

    def disable_patch(self, patch):
        if self.s["transition"] is not None:
            raise KernelError(errno.EBUSY)
        if not self.modern_lifecycle:
            above = self.s["patches"][self.s["patches"].index(patch) + 1 :]
            if above and above[0]["enabled"]:
                raise KernelError(errno.EBUSY)  # only the newest enabled patch can be disabled
        self.klp_debug("'%s': initializing unpatching transition" % patch["name"])
        for obj in patch["objects"]:
            if obj["patched"] and self.object_loaded(obj):
                self.pre_unpatch(patch, obj)
        self.start_transition(patch, 0)
        patch["enabled"] = False
        self.try_complete()

    def reverse_transition(self, patch):
        t = self.s["transition"]
        self.klp_debug(
            "'%s': reversing transition from %s"
            % (patch["name"], "patching to unpatching" if t["target"] == 1 else "unpatching to patching")
        )
        patch["enabled"] = not patch["enabled"]
        t["target"] = 1 - t["target"]
        t["attempts"] = 0
        t["signaled"] = False
        self.klp("'%s': starting %s transition" % (patch["name"], "patching" if t["target"] else "unpatching"))
        self.s["next_tick"] = float(int(self.s["clock"]) + 1)

    def force_transition(self, patch):
        self.klp("forcing remaining tasks to the patched state")
        t = self.s["transition"]
        for task in self.s["tasks"]:
            task["patch_state"] = t["target"]
        if not self.modern_lifecycle:
            self.s["forced_all_until_reboot"] = True  # klp_forced: no patch module is ever put again
        for p in self.pinned_by_force(patch, t["target"]):
            p["forced"] = True
        t["forced"] = True  # completes on the next retry

    def pinned_by_force(self, patch, target):
        """The patches whose module a forced transition pins until reboot, by kernel generation."""
        if self.version < SELECTIVE_FORCE_SINCE:
            return list(self.s["patches"])
        if target == 0:
            return [patch]
        if patch["replace"]:
            return [p for p in self.s["patches"] if p is not patch]
        return []

    # ------------------------------------------------------------------ module load / unload

    def taint(self, flag, key, line):
        self.s["taint"] |= flag
        if key not in self.s["taint_logged"]:
            self.s["taint_logged"].append(key)
            self.log(line)

    def load_module(self, path, params):
        """init_module(): returns 0 or -errno."""
        try:
            modinfo, sections = read_module_file(path)
        except ModinfoError:
            return -errno.ENOEXEC
        name = first(modinfo, "name")
        if not name:
            return -errno.ENOEXEC
        try:
            spec = json.loads(sections[SPEC_SECTION].decode("utf-8")) if SPEC_SECTION in sections else {}
        except ValueError:
            return -errno.ENOEXEC
        spec.setdefault("name", name)
        spec["name"] = name
        if name in self.s["modules"]:
            return -errno.EEXIST
        if not spec.get("signed", False) and self.s["module_sig"]:
            if self.s["sig_enforce"]:
                self.log("Loading of unsigned module is rejected")
                return -errno.EKEYREJECTED
            if self.s["lockdown"] != "none":
                self.log("Lockdown: insmod: unsigned module loading is restricted; see man kernel_lockdown.7")
                return -errno.EPERM
        vermagic = first(modinfo, "vermagic", "")
        if vermagic != vermagic_for(self.s["kernel_release"]):
            self.log("%s: version magic '%s' should be '%s'" % (name, vermagic, vermagic_for(self.s["kernel_release"])))
            return -errno.ENOEXEC
        is_lp = first(modinfo, "livepatch") == "Y"
        if is_lp and not self.s["livepatch"]:
            self.log("%s: module is marked as livepatch module, but livepatch support is disabled" % name)
            return -errno.ENOEXEC
        values = {}
        for pname, pspec in spec.get("params", {}).items():
            values[pname] = pspec.get("default")
        for item in params:
            key, _dummy, raw = item.partition("=")
            if key not in spec.get("params", {}):
                self.log("%s: unknown parameter '%s' ignored" % (name, key))
                continue
            try:
                values[key] = parse_param(spec["params"][key].get("type", "int"), raw)
            except ValueError:
                self.log("%s: `%s' invalid for parameter `%s'" % (name, raw, key))
                return -errno.EINVAL
        taints = set()  # the module's own flags (/proc/modules)
        if not first(modinfo, "intree"):
            self.taint(TAINT_OOT, "oot", "%s: loading out-of-tree module taints kernel." % name)
            taints.add("O")
        if is_lp:
            self.taint(TAINT_LIVEPATCH, "livepatch", "%s: tainting kernel with TAINT_LIVEPATCH" % name)
            taints.add("K")
        if not spec.get("signed", False) and self.s["module_sig"]:
            self.taint(
                TAINT_UNSIGNED,
                "unsigned",
                "%s: module verification failed: signature and/or required key missing - tainting kernel" % name,
            )
            taints.add("E")
        module = {
            "name": name,
            "spec": spec,
            "params": values,
            "build_id": build_id_from_note(sections.get(BUILD_ID_SECTION)),
            "taint": "".join(letter for letter in "OEK" if letter in taints),
            "refcnt": 0,
            "state": "coming",
            "modinfo_livepatch": is_lp,
            "path": os.path.abspath(path),
        }
        self.s["modules"][name] = module
        self.s["module_order"].append(name)
        ret = self.module_coming(module)
        if ret == 0:
            ret = self.module_init(module)
        if ret:
            module["state"] = "going"
            self.module_going_notifier(module)
            self.forget_module(name)
            return ret
        module["state"] = "live"
        return 0

    def module_coming(self, module):
        applied = []
        for patch in list(self.s["patches"]):
            for obj in patch["objects"]:
                if obj["name"] != module["name"]:
                    continue
                self.klp("applying patch '%s' to loading module '%s'" % (patch["name"], module["name"]))
                ret = self.pre_patch(patch, obj)
                if ret:
                    self.klp("pre-patch callback failed for object '%s'" % obj["name"])
                else:
                    ret = self.hook(patch, obj)
                    if ret:
                        self.klp(
                            "failed to apply patch '%s' to module '%s' (%d)" % (patch["name"], module["name"], ret)
                        )
                if ret:
                    self.klp(
                        "patch '%s' failed for module '%s', refusing to load module '%s'"
                        % (patch["name"], module["name"], module["name"])
                    )
                    module["state"] = "going"
                    for done_patch, done_obj in applied:
                        self.revert_object(done_patch, done_obj, module)
                    self.record_refusal(patch, module, obj, ret)
                    return ret
                if self.s["transition"] is None or self.s["transition"]["patch"] != patch["name"]:
                    self.post_patch(patch, obj)
                applied.append((patch, obj))
        return 0

    def record_refusal(self, patch, module, obj, ret):
        self.s.setdefault("refused_loads", []).append(
            {
                "patch": patch["name"],
                "module": module["name"],
                "object": obj["name"],
                "errno": -ret,
                "clock": self.s["clock"],
            }
        )

    def revert_object(self, patch, obj, module):
        in_transition = self.s["transition"] is not None and self.s["transition"]["patch"] == patch["name"]
        if not in_transition and obj["patched"]:
            self.pre_unpatch(patch, obj)
        self.klp("reverting patch '%s' on unloading module '%s'" % (patch["name"], module["name"]))
        obj["patched"] = False
        self.post_unpatch(patch, obj)

    def module_going_notifier(self, module):
        for patch in list(self.s["patches"]):
            for obj in patch["objects"]:
                if obj["name"] == module["name"] and obj["patched"]:
                    self.revert_object(patch, obj, module)

    def module_init(self, module):
        spec = module["spec"]
        name = module["name"]
        for line in spec.get("init_log", []):
            self.log(fill(line, mod=name))
        if spec.get("shadow"):
            run_shadow_program(self, name, spec["shadow"])
        for task_spec in spec.get("tasks", []):
            self.start_module_task(module, task_spec)
        ret = self.resolve(name, spec.get("init_ret", 0))
        if ret:
            return ret
        if module["modinfo_livepatch"] or spec.get("livepatch"):
            return self.klp_enable_patch(module)
        return 0

    def start_module_task(self, module, task_spec):
        name = module["name"]
        for line in task_spec.get("log_enter", []):
            self.log(fill(line, mod=name))
        blocks = True
        if task_spec.get("while_param"):
            blocks = bool(module["params"].get(task_spec["while_param"]))
        if not blocks:
            for line in task_spec.get("log_exit", []):
                self.log(fill(line, mod=name))
            return
        self.add_sleeping_task(
            task_spec["function"],
            task_spec.get("seconds"),
            task_spec.get("ignores_signal", True),
            task_spec.get("comm", "kworker/0:1"),
            module=name,
            log_exit=task_spec.get("log_exit", []),
        )

    def next_pid(self):
        pid = self.s["next_pid"]
        self.s["next_pid"] += 1
        return pid

    def forget_module(self, name):
        self.s["modules"].pop(name, None)
        self.s["module_order"] = [m for m in self.s["module_order"] if m != name]

    def unload_module(self, name):
        """delete_module(): returns 0 or -errno."""
        module = self.s["modules"].get(name)
        if module is None or module["state"] != "live":
            return -errno.ENOENT
        if module["refcnt"] > 0:
            return -errno.EWOULDBLOCK
        module["state"] = "going"
        for task in [t for t in self.s["tasks"] if t.get("module") == name]:
            for line in task.get("log_exit", []):
                self.log(fill(line, mod=name))
            self.s["tasks"].remove(task)
        for line in module["spec"].get("exit_log", []):
            self.log(fill(line, mod=name))
        self.module_going_notifier(module)
        self.forget_module(name)
        # Before 5.1 the module's exit unregisters its disabled patch: only now does the directory go.
        self.s["patches"] = [p for p in self.s["patches"] if p["module"] != name]
        return 0

    # ------------------------------------------------------------------ faults set at boot

    def new_task_patch_state(self):
        """klp_copy_process(): a task born during a transition starts where its parent is, unswitched."""
        t = self.s["transition"]
        return -1 if t is None else 1 - t["target"]

    def add_stall(self, function="*", seconds=None, ignores_signal=True, comm="app_worker"):
        self.add_sleeping_task(function, seconds, ignores_signal, comm)

    def add_sleeping_task(self, function, seconds, ignores_signal, comm, module=None, log_exit=()):
        """A task sleeping inside `function` (a glob) for `seconds` of kernel time (None or "forever": until
        the end), started by `module` (whose exit waits for it) or by nobody in particular (a stall fault).
        Every task in the state has these keys."""
        self.s["tasks"].append(
            {
                "pid": self.next_pid(),
                "comm": comm,
                "patch_state": self.new_task_patch_state(),
                "sleeping_in": [function],
                "until": None if seconds in (None, "forever") else self.s["clock"] + float(seconds),
                "ignores_signal": bool(ignores_signal),
                "module": module,
                "log_exit": list(log_exit),
                "stack": [function] if module else [],
                "runs": self.patches_in_effect(),
            }
        )


# ---------------------------------------------------------------------- persistence and primitives


class SimHost(object):
    """One simulated host's kernel, locked and loaded from its directory for the span of a `with`."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self._lock_fd = None
        self.kernel = None

    def __enter__(self):
        path = os.path.join(self.root, STATE_FILE)
        if not os.path.exists(path):
            raise OSError(errno.ENOENT, "no simulated host here (missing %s)" % STATE_FILE, self.root)
        self._lock_fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self.kernel = SimKernel(load_state(path))
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.kernel.sync_wall_clock()
        return self.kernel

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None or issubclass(exc_type, OSError):
                save_state(self.root, self.kernel.s)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
        return False


def load_state(path):
    """A simulated host's kernel state; a damaged file is an OSError naming it, like any unreadable host."""
    try:
        with open(path) as f:
            state = json.load(f)
    except ValueError as exc:
        raise OSError(errno.EIO, "the simulated host's state is damaged (%s)" % exc, path) from None
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("patches"), list)
        or not isinstance(state.get("modules"), dict)
    ):
        raise OSError(errno.EIO, "the simulated host's state is not a simulated kernel", path)
    return state


def save_state(root, state):
    path = os.path.join(root, STATE_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, separators=(",", ":"))
    os.replace(tmp, path)


def create_host(root, kernel_release=DEFAULT_KERNEL_RELEASE, **options):
    if not os.path.isdir(root):
        os.makedirs(root)
    save_state(root, new_kernel(kernel_release, **options))


class SimPrimitives(object):
    """The primitive calls of _primitives.RealPrimitives, answered by the simulated kernel in sim_root."""

    backend = "sim"

    def __init__(self, sim_root, cwd=None):
        self.root = sim_root
        self.cwd = cwd  # where relative module paths given to insmod are resolved (default: os.getcwd())

    def _host(self):
        return SimHost(self.root)

    def read(self, path):
        with self._host() as k:
            return k.read(path)

    def read_bytes(self, path):
        with self._host() as k:
            return k.read_bytes(path)

    def write(self, path, data):
        with self._host() as k:
            k.write(path, data)

    def listdir(self, path):
        with self._host() as k:
            return k.listdir(path)

    def exists(self, path):
        with self._host() as k:
            return k.exists(path)

    def is_dir(self, path):
        with self._host() as k:
            return k.is_dir(path)

    def run(self, argv):
        with self._host() as k:
            return k.tool(argv, self.cwd)

    log_error = None
    log_wrapped = False

    def read_log(self, cursor=-1):
        with self._host() as k:
            return self._checked_log(k, cursor)

    def _checked_log(self, kernel, cursor):
        self.log_error, wrapped = kernel.log_access(cursor)
        self.log_wrapped = self.log_wrapped or wrapped
        return ([], cursor) if self.log_error else kernel.read_log(cursor)

    def log_cursor(self):
        return self.read_log(-1)[1]

    def log_write(self, text):
        text = text.rstrip("\n")
        if text.startswith("<") and ">" in text[:5] and text[1 : text.index(">")].isdigit():
            text = text[text.index(">") + 1 :]  # /dev/kmsg takes a leading <priority> as the record's level
        with self._host() as k:
            k.log(text)

    def now(self):
        with self._host() as k:
            return k.s["clock"]

    def sleep(self, seconds):
        with self._host() as k:
            k.advance(seconds)


class SimSnapshot(SimPrimitives):
    """A read-only view of a simulated host, loaded once: what patch_info and the probe need. Reading a
    real host changes nothing, and reading this one neither locks it for long nor writes it back."""

    def __init__(self, sim_root):
        SimPrimitives.__init__(self, sim_root)
        path = os.path.join(os.path.abspath(sim_root), STATE_FILE)
        if not os.path.exists(path):
            raise OSError(errno.ENOENT, "no simulated host here (missing %s)" % STATE_FILE, sim_root)
        lock_fd = os.open(os.path.join(os.path.abspath(sim_root), ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
            self.kernel = SimKernel(load_state(path))
        finally:
            os.close(lock_fd)
        self.kernel.sync_wall_clock()

    def read(self, path):
        return self.kernel.read(path)

    def read_bytes(self, path):
        return self.kernel.read_bytes(path)

    def listdir(self, path):
        return self.kernel.listdir(path)

    def exists(self, path):
        return self.kernel.exists(path)

    def is_dir(self, path):
        return self.kernel.is_dir(path)

    def read_log(self, cursor=-1):
        return self._checked_log(self.kernel, cursor)

    def now(self):
        return self.kernel.s["clock"]

    def sleep(self, seconds):
        self.kernel.advance(seconds)

    def write(self, path, data):
        raise OSError(errno.EROFS, "read-only view of a simulated host", path)

    def run(self, argv):
        raise OSError(errno.EROFS, "read-only view of a simulated host")

    def log_write(self, text):
        raise OSError(errno.EROFS, "read-only view of a simulated host")
