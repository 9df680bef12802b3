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
import errno
import hashlib
import os
import re

KLP = "/sys/kernel/livepatch"
POLL = 0.1

TAINT_LETTERS = "PFSRMBUDAWCIOELKXTN"
TAINT_NAMES = [
    "proprietary_module",
    "forced_module",
    "cpu_out_of_spec",
    "forced_rmmod",
    "machine_check",
    "bad_page",
    "user",
    "die",
    "overridden_acpi_table",
    "warn",
    "crap",
    "firmware_workaround",
    "oot_module",
    "unsigned_module",
    "softlockup",
    "livepatch",
    "aux",
    "randstruct",
    "test",
]

# kmod words some errnos its own way (reference, section 6); everything else is strerror.
TOOL_MESSAGES = {
    "Invalid parameters": errno.EINVAL,
    "Invalid module format": errno.ENOEXEC,
    "Unknown symbol in module": errno.ENOENT,
    "Module has wrong symbol version": errno.ESRCH,
}
STRERROR = {}
for _num in sorted(errno.errorcode, reverse=True):
    STRERROR[os.strerror(_num)] = _num
STRERROR["Operation would block"] = errno.EWOULDBLOCK

RE_LOAD_ERROR = re.compile(
    r"(?:could not insert module .*|can't insert '.*'|could not insert '.*'): (?P<msg>[^:\n]+)\s*$"
)
RE_REFUSED_OBJECT = re.compile(r"livepatch: pre-patch callback failed for object '(?P<obj>[^']+)'")
RE_HOOK_FAILED = re.compile(r"livepatch: failed to patch object '(?P<obj>[^']+)'")
RE_REFUSED_LOAD = re.compile(
    r"livepatch: patch '(?P<patch>[^']+)' failed for module '(?P<module>[^']+)', refusing to load module"
)
RE_STARTING = re.compile(r"livepatch: '(?P<patch>[^']+)': starting (?:patching|unpatching) transition")
FORCING = "livepatch: forcing remaining tasks to the patched state"


# Every klp_error a module can return, with what it means. The modules' RETURN docs, the README, the
# operators' guide and the recorder all name exactly these (a test fails when they drift apart).
KLP_ERRORS = {
    "refused": "a pre-patch callback refused the patch; the kernel removed it",
    "transition_stalled": "tasks kept sleeping in a function being patched past the timeout",
    "busy": "another patch's transition kept running past the retries",
    "incompatible_state": "the patch's system states conflict with an installed patch",
    "not_livepatch": "the module is not marked as a livepatch",
    "vermagic_mismatch": "the module was built for another kernel",
    "signature_rejected": "the kernel requires a module signature it can verify",
    "lockdown": "the kernel is locked down and refuses unsigned modules",
    "checksum_mismatch": "the file on the host differs from the expected sha256",
    "in_use": "the module cannot be removed while something holds it",
    "forced_unremovable": "the patch was force-transitioned; its module stays until a reboot",
    "livepatch_unsupported": "the kernel has no livepatch support",
    "invalid_argument": "the task's arguments contradict each other or are missing",
    "source_unreadable": "the .ko cannot be read on the host or has no module name",
    "state_unreadable": "the kernel's livepatch state cannot be read",
    "disable_failed": "writing 0 to the patch's enabled file failed",
    "insmod_failed": "the module load failed with another errno",
}


class LivepatchError(Exception):
    """A failure with a stable code. `details` rides along into the module result."""

    def __init__(self, klp_error, msg, **details):
        Exception.__init__(self, msg)
        self.klp_error = klp_error
        self.msg = msg
        self.details = details


def errno_name(num):
    return errno.errorcode.get(num) if num is not None else None


def errno_from_tool(stderr):
    """The errno behind kmod's (or busybox's) one-line error."""
    for line in reversed(stderr.strip().splitlines()):
        if re.search(r"Module \S+ is in use", line):
            return errno.EBUSY  # kmod's rmmod checks the refcount itself and returns -EBUSY
        m = RE_LOAD_ERROR.search(line)
        if m:
            message = m.group("msg").strip()
            if message in TOOL_MESSAGES:
                return TOOL_MESSAGES[message]
            return STRERROR.get(message)
    return None


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
        for entry in entries:
            if entry in ("enabled", "transition", "force", "signal", "replace", "stack_order"):
                continue
            objects[entry] = self.read_flag("%s/%s/patched" % (base, entry))
        return {
            "name": name,
            "enabled": self.read_flag(base + "/enabled"),
            "transition": self.read_flag(base + "/transition"),
            "replace": self.read_flag(base + "/replace") if "replace" in entries else None,
            "stack_order": self.read_int(base + "/stack_order") if "stack_order" in entries else None,
            "objects": objects,
        }

    def patches(self):
        found = [s for s in (self.patch_state(n) for n in self.patch_names()) if s is not None]
        if found and all(p["stack_order"] is None for p in found):
            # Before 6.13 the stack order is not exported; the kernel log's order of enabling is the
            # best evidence, and the kernel lists the directories in no particular order.
            order = self.enable_order()
            for p in found:
                p["stack_order_estimated"] = True
            found.sort(key=lambda p: order.get(p["name"], 1 << 30))
        else:
            found.sort(key=lambda p: p["stack_order"] or 0)
        return found

    def enable_order(self):
        records, _dummy = self.p.read_log(-1)
        order = {}
        for seq, _dummy, text in records:
            m = re.search(r"livepatch: enabling patch '([^']+)'", text)
            if m:
                order[m.group(1)] = seq
        return order

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
        value = self.read_int("/proc/sys/kernel/tainted") or 0
        flags = [TAINT_LETTERS[i] for i in range(len(TAINT_LETTERS)) if value & (1 << i)]
        names = [TAINT_NAMES[i] for i in range(len(TAINT_NAMES)) if value & (1 << i)]
        return {"value": value, "flags": "".join(flags), "names": names}

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
        out = []
        last_object = None
        for seq, ts, text in records:
            m = RE_REFUSED_OBJECT.search(text)
            if m:
                last_object = m.group("obj")
                continue
            m = RE_REFUSED_LOAD.search(text)
            if m:
                out.append(
                    {
                        "patch": m.group("patch"),
                        "module": m.group("module"),
                        "seq": seq,
                        "seconds_since_boot": ts,
                        "callback_refused": last_object == m.group("module"),
                    }
                )
        return out

    def forced_patches(self, records=None):
        """Patches whose transition was forced, attributed from the kernel log."""
        if records is None:
            records, _dummy = self.p.read_log(-1)
        forced, current = set(), None
        for _dummy_seq, _dummy_ts, text in records:
            m = RE_STARTING.search(text)
            if m:
                current = m.group("patch")
            elif FORCING in text and current:
                forced.add(current)
        return forced

    def facts(self, with_tasks=True):
        supported = self.supported()
        records, cursor = self.p.read_log(-1)
        forced = self.forced_patches(records)
        patches = self.patches() if supported else []
        for p in patches:
            p["forced"] = p["name"] in forced
            p["module_refcnt"] = self.module_refcnt(p["name"])
        transition = None
        for p in patches:
            if p["transition"]:
                target = 1 if p["enabled"] else 0
                transition = {
                    "patch": p["name"],
                    "target": "patched" if target else "unpatched",
                    "stalled_tasks": self.stalled_tasks(target) if with_tasks else [],
                }
        # A forced patch that was disabled has no directory but keeps its module forever.
        lingering = []
        for name in sorted(forced):
            if name not in [p["name"] for p in patches] and self.module_loaded(name):
                lingering.append({"name": name, "module_refcnt": self.module_refcnt(name), "forced": True})
        return {
            "kernel_release": self.kernel_release(),
            "livepatch_supported": supported,
            "patches": patches,
            "forced_modules": lingering,
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

    def gone(self, name):
        return self.patch_state(name) is None

    # ------------------------------------------------------------------ kernel log of one call

    def log_since(self, cursor):
        records, _dummy = self.p.read_log(cursor)
        return [text for dummy_seq, dummy_ts, text in records]


def livepatch_lines(lines, name):
    """The lines a call caused that concern livepatch or the patch module itself."""
    return [
        line
        for line in lines
        if line.startswith("livepatch:")
        or line.startswith(name + ":")
        or line.startswith("Lockdown:")
        or "unsigned module" in line
    ]


def classify_insmod_failure(name, rc, stderr, lines):
    """A LivepatchError for a failed insmod, from the kernel log and the errno."""
    err = errno_from_tool(stderr)
    details = {"rc": rc, "stderr": stderr.strip(), "errno": err, "errno_name": errno_name(err)}
    enabling = "livepatch: enabling patch '%s'" % name in lines
    for line in lines:
        m = RE_REFUSED_OBJECT.search(line)
        if m and enabling:
            return LivepatchError(
                "refused",
                "pre-patch callback of %s refused object '%s' (%s)" % (name, m.group("obj"), errno_name(err) or err),
                refused_object=m.group("obj"),
                **details,
            )
    for line in lines:
        m = RE_HOOK_FAILED.search(line)
        if m and enabling:
            return LivepatchError(
                "insmod_failed",
                "the kernel failed to patch object '%s' of %s (%s)" % (m.group("obj"), name, errno_name(err) or err),
                failed_object=m.group("obj"),
                **details,
            )
    if any("is not compatible with the already installed livepatches" in line for line in lines):
        return LivepatchError(
            "incompatible_state", "%s is not compatible with the installed livepatches' system states" % name, **details
        )
    if any("is not marked as a livepatch module" in line for line in lines):
        return LivepatchError("not_livepatch", "%s is not marked as a livepatch module" % name, **details)
    if (
        any("version magic" in line or "disagrees about version of symbol" in line for line in lines)
        or err == errno.ENOEXEC
    ):
        return LivepatchError(
            "vermagic_mismatch",
            "the kernel refused %s as built for another kernel (%s)" % (name, errno_name(err)),
            **details,
        )
    if err == errno.EKEYREJECTED:
        return LivepatchError(
            "signature_rejected", "the kernel requires signed modules and rejected %s" % name, **details
        )
    if err == errno.EPERM and any(line.startswith("Lockdown:") for line in lines):
        return LivepatchError("lockdown", "the kernel is locked down: unsigned module %s refused" % name, **details)
    if err == errno.EBUSY and not enabling:
        return LivepatchError("busy", "another livepatch transition is in progress", **details)
    if err == errno.EEXIST:
        return LivepatchError("insmod_failed", "module %s is already loaded" % name, **details)
    return LivepatchError(
        "insmod_failed",
        "insmod of %s failed: %s" % (name, stderr.strip().splitlines()[-1] if stderr.strip() else "rc %d" % rc),
        **details,
    )
