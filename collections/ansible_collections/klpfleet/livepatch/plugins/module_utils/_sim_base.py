# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""What the simulated kernel's parts share: constants, the kernel's errors and its small parsers."""

from __future__ import annotations

import errno
import os
import re

# The contract with the controller (klpfleet.sim reads these through klpfleet.collection): the ELF section that
# carries a simulated module's spec, and the kernel a simulated host runs unless told otherwise.
SPEC_SECTION = ".klpfleet.spec"
DEFAULT_KERNEL_RELEASE = "6.1.0-56-amd64"
STATE_FILE = "kernel.json"
LOG_LIMIT = 20000  # records kept, like a ring buffer

KLP = "/sys/kernel/livepatch"
TAINT_OOT, TAINT_UNSIGNED, TAINT_LIVEPATCH = 1 << 12, 1 << 13, 1 << 15

# Where the livepatch core's behaviour changed, by kernel version (docs/kernel.md, "Kernel generations").
# Before 5.1 a disabled patch stays registered until rmmod, only the newest patch can be disabled, a force pins
# every patch until reboot (even later ones) and the kernel never signals stalled tasks itself; there is no
# atomic replace. From 5.1 a force pins every patch present. Since the 2022 change "livepatch: Don't block
# removal of patches that are safe to unload" (seen: absent in 5.10, present in 6.1) it pins only the patch
# being unpatched, or the patches a forced replace patch replaces.
MODERN_LIFECYCLE_SINCE = (5, 1)
SYSTEM_STATES_SINCE = (5, 5)
SELECTIVE_FORCE_SINCE = (6, 0)
# The transition's debug line for a stalled task is printed by klp_check_stack on 5.10, by
# klp_try_switch_task on 6.1 (both seen).
TRY_SWITCH_WORDING_SINCE = (6, 0)

MODULE_STATES = {
    "live": "[MODULE_STATE_LIVE] Normal state",
    "coming": "[MODULE_STATE_COMING] Full formed, running module_init",
    "going": "[MODULE_STATE_GOING] Going away",
}

ERRNO_BY_NAME = {name: num for num, name in errno.errorcode.items()}


class KernelError(OSError):
    def __init__(self, err, path=None):
        OSError.__init__(self, err, os.strerror(err), path)


def errno_value(value):
    """EBUSY, 16, -16, '-16' -> 16."""
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        if value not in ERRNO_BY_NAME:
            raise ValueError("unknown errno name %r" % value)
        return ERRNO_BY_NAME[value]
    return abs(int(value))


def release_version(release):
    parts = []
    for piece in release.split("-")[0].split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    while len(parts) < 2:
        parts.append(0)
    return tuple(parts)


PLACEHOLDER_RE = re.compile(r"\{(mod|obj|cb)\}")


def fill(template, **values):
    """A spec's log line with {mod}, {obj} and {cb} filled in, and nothing else interpreted (str.format
    would evaluate attribute and index lookups written in the spec)."""
    return PLACEHOLDER_RE.sub(lambda m: str(values.get(m.group(1), m.group(0))), template)


def vermagic_for(release):
    return "%s SMP preempt mod_unload modversions " % release


def kstrtobool(text):
    s = text.strip()
    if not s:
        raise KernelError(errno.EINVAL)
    c = s[0]
    if c in "yY1":
        return True
    if c in "nN0":
        return False
    if c in "oO" and len(s) > 1:
        if s[1] in "nN":
            return True
        if s[1] in "fF":
            return False
    raise KernelError(errno.EINVAL)


def parse_param(kind, raw):
    if kind == "bool":
        try:
            return kstrtobool(raw)
        except OSError:
            raise ValueError(raw) from None
    if kind == "int":
        return int(raw, 0)
    return raw


def format_param(kind, value):
    if kind == "bool":
        return "Y\n" if value else "N\n"
    return "%s\n" % (value,)
