# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""The words a module result may use: kernel module names, klp_error codes and outcomes, and the exception that
carries a code.

Imports nothing but `re`, so the controller reads this very file (by path) to validate what hosts send back:
one table for the host that writes a result and the controller that must not believe anything else.
"""

from __future__ import annotations

import re

# A kernel module's name (MODULE_NAME_LEN is 56 with the NUL); it becomes a path under /sys, so nothing else.
MODULE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,55}$")

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
    "forced_unremovable": "a forced transition pinned the patch's module; it stays loaded until a reboot",
    "different_build": "a different build of the patch is loaded under the same name",
    "not_on_top": "this kernel (pre-5.1 lifecycle) disables only the newest patch; newer ones must go first",
    "livepatch_unsupported": "the kernel has no livepatch support",
    "invalid_argument": "the task's arguments contradict each other or are missing",
    "source_unreadable": "the .ko cannot be read (on the controller or the host) or has no module name",
    "install_failed": "the .ko could not be written to (or deleted from) the host's patch directory",
    "state_unreadable": "the kernel's livepatch state cannot be read",
    "disable_failed": "writing 0 to the patch's enabled file failed",
    "insmod_failed": "the module load failed with another errno",
}

# What the patch module's result says happened (its RETURN's `outcome` choices).
OUTCOMES = ("applied", "already_applied", "removed", "already_absent", "refused", "stalled", "failed")


class LivepatchError(Exception):
    """A failure with a stable code. `details` rides along into the module result."""

    def __init__(self, klp_error, msg, **details):
        Exception.__init__(self, msg)
        self.klp_error = klp_error
        self.msg = msg
        self.details = details
