# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""What the kernel and the module tools say, read: the taint flags, the errno behind kmod's (or busybox's) words,
the livepatch core's log lines, and a failed insmod classified from the kernel log plus the errno."""

from __future__ import annotations

import errno
import os
import re

from ansible_collections.klpfleet.livepatch.plugins.module_utils._codes import LivepatchError

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

# kmod words some errnos its own way (docs/kernel.md, "What the tools print"), busybox others, in lower case;
# everything else is strerror. Matched without regard to case.
TOOL_MESSAGES = {
    "invalid parameters": errno.EINVAL,
    "invalid parameter": errno.EINVAL,
    "invalid module format": errno.ENOEXEC,
    "unknown symbol in module": errno.ENOENT,
    "unknown symbol in module, or unknown parameter": errno.ENOENT,
    "module has wrong symbol version": errno.ESRCH,
    "kernel does not support requested operation": errno.ENOSYS,
}
STRERROR = {}
for _num in sorted(errno.errorcode, reverse=True):
    STRERROR[os.strerror(_num).lower()] = _num
STRERROR["operation would block"] = errno.EWOULDBLOCK

RE_LOAD_ERROR = re.compile(
    r"(?:could not insert module .*|can't insert '.*'|could not insert '.*'): (?P<msg>[^:\n]+)\s*$"
)
RE_REFUSED_OBJECT = re.compile(r"livepatch: pre-patch callback failed for object '(?P<obj>[^']+)'")
RE_HOOK_FAILED = re.compile(r"livepatch: failed to patch object '(?P<obj>[^']+)'")
RE_REFUSED_LOAD = re.compile(
    r"livepatch: patch '(?P<patch>[^']+)' failed for module '(?P<module>[^']+)', refusing to load module"
)
RE_ENABLING = re.compile(r"livepatch: enabling patch '(?P<patch>[^']+)'")
RE_UNPATCHED = re.compile(r"livepatch: '(?P<patch>[^']+)': unpatching complete")
FORCING = "livepatch: forcing remaining tasks to the patched state"
# The module loader's words when ENOEXEC is about the kernel it was built for, not a relocation or format fault.
VERMAGIC_WORDS = ("version magic", "disagrees about version of symbol", "no symbol version for")


def errno_name(num):
    return errno.errorcode.get(num) if num is not None else None


def errno_from_tool(stderr):
    """The errno behind kmod's (or busybox's) one-line error."""
    for line in reversed(stderr.strip().splitlines()):
        if re.search(r"Module \S+ is in use", line):
            return errno.EBUSY  # kmod's rmmod checks the refcount itself and returns -EBUSY
        m = RE_LOAD_ERROR.search(line)
        if m:
            message = m.group("msg").strip().lower()
            if message in TOOL_MESSAGES:
                return TOOL_MESSAGES[message]
            return STRERROR.get(message)
    return None


def taint_of(value):
    """/proc/sys/kernel/tainted as its letters and names."""
    flags = [TAINT_LETTERS[i] for i in range(len(TAINT_LETTERS)) if value & (1 << i)]
    names = [TAINT_NAMES[i] for i in range(len(TAINT_NAMES)) if value & (1 << i)]
    return {"value": value, "flags": "".join(flags), "names": names}


def enable_order(records):
    """Each patch's last "enabling patch" record: the order the kernel enabled them in."""
    order = {}
    for seq, _dummy, text in records:
        m = RE_ENABLING.search(text)
        if m:
            order[m.group("patch")] = seq
    return order


def refused_loads(records):
    """Target-module loads a patch refused, each with whether its pre-patch callback said no."""
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


def patches_around_forces(records):
    """(patches enabled and not unpatched at the end of the log, those enabled when a transition was forced,
    whether any was forced)."""
    present, enabled_before_force, forced_any = set(), set(), False
    for _dummy_seq, _dummy_ts, text in records:
        m = RE_ENABLING.search(text)
        if m:
            present.add(m.group("patch"))
            continue
        m = RE_UNPATCHED.search(text)
        if m:
            present.discard(m.group("patch"))
            continue
        if FORCING in text:
            forced_any = True
            enabled_before_force |= present
    return present, enabled_before_force, forced_any


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


def enable_block(lines, name):
    """The log lines of this load's enable attempt: from "enabling patch '<name>'" to its end. A refusal line
    outside it belongs to another load (a target module refused by another patch, say), never to this one."""
    start = "livepatch: enabling patch '%s'" % name
    if start not in lines:
        return []
    block = []
    for line in lines[lines.index(start) + 1 :]:
        if RE_ENABLING.search(line):
            break
        block.append(line)
        if line in ("livepatch: failed to enable patch '%s'" % name, "livepatch: '%s': unpatching complete" % name):
            break
    return block


def classify_insmod_failure(name, rc, stderr, lines, log_error=None):
    """A LivepatchError for a failed insmod, from the kernel log plus the errno. Without the log (log_error)
    a callback's refusal cannot be told from any other failure with the same errno: the result says so."""
    err = errno_from_tool(stderr)
    details = {"rc": rc, "stderr": stderr.strip(), "errno": err, "errno_name": errno_name(err)}
    if log_error:
        details["kernel_log_unreadable"] = log_error
        details["warnings"] = [
            "the kernel log could not be read (%s): a pre-patch refusal looks like any other failure" % log_error
        ]
    block = enable_block(lines, name)
    for line in block:
        m = RE_REFUSED_OBJECT.search(line)
        if m:
            return LivepatchError(
                "refused",
                "pre-patch callback of %s refused object '%s' (%s)" % (name, m.group("obj"), errno_name(err) or err),
                refused_object=m.group("obj"),
                **details,
            )
    for line in block:
        m = RE_HOOK_FAILED.search(line)
        if m:
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
    if any(word in line for line in lines for word in VERMAGIC_WORDS):
        return LivepatchError(
            "vermagic_mismatch",
            "the kernel refused %s as built for another kernel (%s)" % (name, errno_name(err)),
            **details,
        )
    if err == errno.ENOEXEC:
        # ENOEXEC is also a relocation the loader cannot apply or a malformed section: the log says which.
        said = [line for line in lines if line.startswith(name + ":") or "livepatch:" in line]
        return LivepatchError(
            "insmod_failed",
            "the kernel refused %s as an invalid module (ENOEXEC)%s"
            % (name, ": " + said[-1] if said else "; the kernel log names no cause"),
            **details,
        )
    if err == errno.EKEYREJECTED:
        return LivepatchError(
            "signature_rejected", "the kernel requires signed modules and rejected %s" % name, **details
        )
    if err == errno.EPERM and any(line.startswith("Lockdown:") for line in lines):
        return LivepatchError("lockdown", "the kernel is locked down: unsigned module %s refused" % name, **details)
    enabling = "livepatch: enabling patch '%s'" % name in lines
    if err == errno.EBUSY and not enabling:
        return LivepatchError("busy", "another livepatch transition is in progress", **details)
    if err == errno.EEXIST:
        return LivepatchError("insmod_failed", "module %s is already loaded" % name, **details)
    return LivepatchError(
        "insmod_failed",
        "insmod of %s failed: %s" % (name, stderr.strip().splitlines()[-1] if stderr.strip() else "rc %d" % rc),
        **details,
    )
