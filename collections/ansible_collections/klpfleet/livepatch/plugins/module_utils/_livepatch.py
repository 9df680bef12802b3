# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""Livepatch operations on one host, written once over the primitive layer (_primitives).

Real and simulated hosts run exactly this code. It reads the full livepatch state, loads a patch with
retries while another transition runs, waits for the transition, finds stalled tasks, backs a stalled
transition out, and classifies every failure from the kernel log plus the errno, never from one tool's
wording alone. Failures raise LivepatchError with a stable `klp_error` and the partial result.
"""

from __future__ import annotations

import contextlib
import hashlib
import re

from ansible_collections.klpfleet.livepatch.plugins.module_utils import _codes
from ansible_collections.klpfleet.livepatch.plugins.module_utils._kernel_log import (
    enable_order,
    patches_around_forces,
    refused_loads,
    taint_of,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._modinfo import build_id_from_note

KLP = "/sys/kernel/livepatch"
# The vocabulary of results lives in _codes (the controller reads that file to validate what hosts send back).
MODULE_NAME_RE = _codes.MODULE_NAME_RE
KLP_ERRORS = _codes.KLP_ERRORS
LivepatchError = _codes.LivepatchError
POLL = 0.1

# Lifecycles (docs/kernel.md, "Kernel generations"), decided from what the host's sysfs shows:
# before 5.1 a disabled patch stays registered until rmmod and only the newest can be disabled.
LIFECYCLE_LEGACY, LIFECYCLE_MODERN = "pre-5.1", "5.1+"
# Which patches a forced transition pins until reboot: every patch from then on (pre-5.1), every patch
# present (5.1 until the 2022 change), or only those unsafe to unload (since; 6.1 and 6.12 seen).
FORCE_PINS_ALL_FOREVER, FORCE_PINS_ALL_PRESENT, FORCE_PINS_UNSAFE = "all-until-reboot", "all-present", "unsafe-only"


def check_name(name):
    if not isinstance(name, str) or not MODULE_NAME_RE.match(name):
        raise LivepatchError("invalid_argument", "%r is not a kernel module name" % (name,))
    return name


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Livepatch(object):
    def __init__(self, prims):
        self.p = prims

    # ------------------------------------------------------------------ reading

    def read_int(self, path):
        try:
            return int(self.p.read(path).strip())
        except (OSError, ValueError):
            return None

    def read_flag(self, path):
        value = self.read_int(path)
        return None if value is None else bool(value)

    def supported(self):
        return self.p.is_dir(KLP)

    def kernel_release(self):
        return self.p.read("/proc/sys/kernel/osrelease").strip()

    def boot_id(self):
        """This boot's random id: a reboot is the only thing that changes it."""
        try:
            return self.p.read("/proc/sys/kernel/random/boot_id").strip() or None
        except OSError:
            return None

    def booted_at(self):
        """When this boot started, in seconds since the epoch (/proc/stat's btime)."""
        try:
            for line in self.p.read("/proc/stat").splitlines():
                if line.startswith("btime "):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    def patch_names(self):
        try:
            return self.p.listdir(KLP)
        except OSError:
            return []

    def module_loaded(self, name):
        try:
            return self.p.read("/sys/module/%s/initstate" % name).strip() in ("live", "coming", "going")
        except OSError:
            return False

    def module_refcnt(self, name):
        return self.read_int("/sys/module/%s/refcnt" % name)

    def patch_state(self, name):
        """One patch's sysfs state, or None when it has no directory. Attributes an older kernel lacks
        (replace before 6.11, stack_order before 6.13, patched before 6.0) read as None."""
        base = "%s/%s" % (KLP, name)
        try:
            entries = self.p.listdir(base)
        except OSError:
            return None
        objects = {}
        functions = {}
        for entry in entries:
            if entry in ("enabled", "transition", "force", "signal", "replace", "stack_order"):
                continue
            objects[entry] = self.read_flag("%s/%s/patched" % (base, entry))
            try:
                # One directory per function, named `<function>,<sympos>` (sympos 0 is shown as 1).
                functions[entry] = sorted(f for f in self.p.listdir("%s/%s" % (base, entry)) if "," in f)
            except OSError:
                functions[entry] = None  # the patch went away meanwhile
        return {
            "name": name,
            "enabled": self.read_flag(base + "/enabled"),
            "transition": self.read_flag(base + "/transition"),
            "replace": self.read_flag(base + "/replace") if "replace" in entries else None,
            "stack_order": self.read_int(base + "/stack_order") if "stack_order" in entries else None,
            "objects": objects,
            "functions": functions,
        }

    # ------------------------------------------------------------------ modules and generations

    def proc_modules(self):
        """/proc/modules, newest module first: [{name, refcnt, state, taint}] ([] when unreadable)."""
        try:
            text = self.p.read("/proc/modules")
        except OSError:
            return []
        modules = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 5:
                continue
            taint = line.rsplit("(", 1)[1].rstrip(")") if line.endswith(")") else ""
            refcnt = int(fields[2]) if fields[2].isdigit() else None
            modules.append({"name": fields[0], "refcnt": refcnt, "state": fields[4], "taint": taint})
        return modules

    def module_build_id(self, name):
        """The GNU build ID of the loaded module (its identity), or None where the kernel does not show it."""
        try:
            return build_id_from_note(self.p.read_bytes("/sys/module/%s/notes/.note.gnu.build-id" % name))
        except OSError:
            return None

    def module_srcversion(self, name):
        try:
            return self.p.read("/sys/module/%s/srcversion" % name).strip() or None
        except OSError:
            return None

    def lifecycle(self, names=None):
        """pre-5.1 or 5.1+, from what a patch directory holds: `signal` existed only before 5.1, `force` exists
        from 4.15, and only before 5.1 does a disabled patch outside a transition keep its directory. None while
        no patch is loaded."""
        for name in self.patch_names() if names is None else names:
            try:
                entries = self.p.listdir("%s/%s" % (KLP, name))
            except OSError:
                continue
            if "signal" in entries or "force" not in entries:
                return LIFECYCLE_LEGACY
            if self.read_flag("%s/%s/enabled" % (KLP, name)) is False and not self.read_flag(
                "%s/%s/transition" % (KLP, name)
            ):
                return LIFECYCLE_LEGACY
            return LIFECYCLE_MODERN
        return None

    def force_semantics(self, lifecycle, patches):
        """Which patches a force pins on this kernel. The 2022 change came with 6.0, as did the objects'
        `patched` attribute, the evidence used here (kernels 5.17 to 5.19 may differ: removal reports what
        actually happened, from the module's reference count)."""
        if lifecycle == LIFECYCLE_LEGACY:
            return FORCE_PINS_ALL_FOREVER
        if lifecycle is None or not patches:
            return None
        has_patched = any(v is not None for p in patches for v in p["objects"].values())
        return FORCE_PINS_UNSAFE if has_patched else FORCE_PINS_ALL_PRESENT

    def pinned_modules(self, modules=None, patches=None):
        """Livepatch modules (taint K) whose patch is no longer enabled but whose reference was never dropped:
        a forced transition pinned them until reboot. Evidence, not inference from the log. `modules` and
        `patches` (the states already read) save reading them again."""
        if patches is None:
            patches = [s for s in (self.patch_state(n) for n in self.patch_names()) if s is not None]
        holding = {p["name"] for p in patches if p["enabled"] or p["transition"]}  # they hold their own reference
        return [
            {"name": m["name"], "module_refcnt": m["refcnt"], "forced": True}
            for m in (self.proc_modules() if modules is None else modules)
            if "K" in m["taint"] and m["state"] == "Live" and m["refcnt"] and m["name"] not in holding
        ]

    def patches(self, modules=None, records=None):
        """Every patch in stack order (oldest first). The order is the kernel's `stack_order` (6.13+), else the
        order the modules were loaded in (/proc/modules, which survives the kernel log); the log's "enabling
        patch" lines are a cross-check (`stack_order_conflict` when they disagree)."""
        found = [s for s in (self.patch_state(n) for n in self.patch_names()) if s is not None]
        if not found:
            return found
        if all(p["stack_order"] is not None for p in found):
            found.sort(key=lambda p: p["stack_order"])
            source = "sysfs"
        else:
            newest_first = [m["name"] for m in (self.proc_modules() if modules is None else modules)]
            loaded = {name: len(newest_first) - i for i, name in enumerate(newest_first)}
            found.sort(key=lambda p: (loaded.get(p["name"], 0), p["name"]))
            source = "module_load_order" if loaded else "name"
            for i, p in enumerate(found):
                p["stack_order"] = i + 1
        logged = self.enable_order(records)
        in_log = [p["name"] for p in found if p["name"] in logged]
        by_log = sorted(in_log, key=lambda n: logged[n])
        for p in found:
            p["stack_order_source"] = source
            p["stack_order_estimated"] = source != "sysfs"
            p["stack_order_conflict"] = in_log != by_log and p["name"] in in_log
        return found

    def enable_order(self, records=None):
        if records is None:
            records, _dummy = self.p.read_log(-1)
        return enable_order(records)

    def log_status(self):
        """Whether the kernel log could be read (and whether the ring buffer had already dropped records)."""
        return {
            "readable": getattr(self.p, "log_error", None) is None,
            "error": getattr(self.p, "log_error", None),
            "wrapped": bool(getattr(self.p, "log_wrapped", False)),
        }

    def tasks(self):
        """(pid, tid) of every thread; tid == pid for the main thread."""
        out = []
        for entry in self.p.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                tids = self.p.listdir("/proc/%s/task" % entry)
            except OSError:
                continue
            out.extend((int(entry), int(t)) for t in tids if t.isdigit())
        return out

    def stalled_tasks(self, target, limit=50):
        """Tasks whose patch_state differs from the transition's target, as kpatch reports them."""
        stalled = []
        for pid, tid in self.tasks():
            base = "/proc/%d/task/%d" % (pid, tid)
            state = self.read_int(base + "/patch_state")
            if state is None or state == -1 or state == target:
                continue
            task = {"pid": pid, "tid": tid, "patch_state": state, "comm": None, "stack": []}
            with contextlib.suppress(OSError):
                task["comm"] = self.p.read(base + "/comm").strip()
            with contextlib.suppress(OSError):
                task["stack"] = [line.strip() for line in self.p.read(base + "/stack").splitlines() if line.strip()]
            stalled.append(task)
            if len(stalled) >= limit:
                break
        return stalled

    def taint(self):
        return taint_of(self.read_int("/proc/sys/kernel/tainted") or 0)

    def signatures(self):
        enforced = None
        with contextlib.suppress(OSError):
            enforced = self.p.read("/sys/module/module/parameters/sig_enforce").strip() in ("Y", "1")
        lockdown = None
        try:
            m = re.search(r"\[(\w+)\]", self.p.read("/sys/kernel/security/lockdown"))
            lockdown = m.group(1) if m else None
        except OSError:
            pass
        return {"enforced": enforced, "lockdown": lockdown}

    def refused_module_loads(self, records=None):
        """Target-module loads a patch refused (they can surface days after a rollout)."""
        if records is None:
            records, _dummy = self.p.read_log(-1)
        return refused_loads(records)

    def forced_patches(self, semantics, enabled_names, records=None):
        """The enabled patches a forced transition pinned, from the kernel log and this kernel's force
        semantics. On kernels that pin only what is unsafe to unload, an enabled patch is never pinned (what a
        force pinned was disabled or replaced: `pinned_modules` shows it). Elsewhere every patch enabled before
        a force is. None when the log cannot tell (unreadable, or wrapped past the loads)."""
        if semantics == FORCE_PINS_UNSAFE:
            return set()
        if records is None:
            records, _dummy = self.p.read_log(-1)
        status = self.log_status()
        present, enabled_before_force, forced_any = patches_around_forces(records)
        if semantics == FORCE_PINS_ALL_FOREVER and forced_any:
            return set(enabled_names)
        unknown = [n for n in enabled_names if n not in present and n not in enabled_before_force]
        if unknown and (not status["readable"] or status["wrapped"]):
            return None
        return enabled_before_force & set(enabled_names)

    def facts(self, with_tasks=True):
        supported = self.supported()
        records, cursor = self.p.read_log(-1)
        modules = self.proc_modules()
        patches = self.patches(modules, records) if supported else []
        names = [p["name"] for p in patches]
        lifecycle = self.lifecycle(names)
        semantics = self.force_semantics(lifecycle, patches)
        forced = self.forced_patches(semantics, [p["name"] for p in patches if p["enabled"]], records)
        for p in patches:
            p["forced"] = None if forced is None else p["name"] in forced
            p["module_refcnt"] = self.module_refcnt(p["name"])
            p["build_id"] = self.module_build_id(p["name"])
        transition = None
        for p in patches:
            if p["transition"]:
                target = 1 if p["enabled"] else 0
                transition = {
                    "patch": p["name"],
                    "target": "patched" if target else "unpatched",
                    "stalled_tasks": self.stalled_tasks(target) if with_tasks else [],
                }
        return {
            "kernel_release": self.kernel_release(),
            "boot_id": self.boot_id(),
            "booted_at": self.booted_at(),
            "livepatch_supported": supported,
            "lifecycle": lifecycle,
            "force_semantics": semantics,
            "stack_order_source": patches[0]["stack_order_source"] if patches else None,
            "stack_order_conflict": any(p["stack_order_conflict"] for p in patches),
            "kernel_log": self.log_status(),
            "patches": patches,
            # Disabled (or replaced) patches whose module a forced transition pinned until reboot.
            "forced_modules": self.pinned_modules(modules, patches) if supported else [],
            "transition": transition,
            "taint": self.taint(),
            "signatures": self.signatures(),
            "refused_module_loads": self.refused_module_loads(records),
            "log_cursor": cursor,
        }

    # ------------------------------------------------------------------ waiting

    def wait_until(self, predicate, timeout):
        """Poll predicate until true or timeout seconds of host time pass. Returns (ok, seconds)."""
        start = self.p.now()
        while True:
            if predicate():
                return True, self.p.now() - start
            if self.p.now() - start >= timeout:
                return False, self.p.now() - start
            self.p.sleep(POLL)

    def transition_done(self, name):
        state = self.patch_state(name)
        return state is None or not state["transition"]

    # ------------------------------------------------------------------ kernel log of one call

    def log_since(self, cursor):
        records, _dummy = self.p.read_log(cursor)
        return [text for dummy_seq, dummy_ts, text in records]
