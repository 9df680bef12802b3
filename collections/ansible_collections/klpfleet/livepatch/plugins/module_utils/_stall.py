# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""A patching transition that does not finish in time: left running (wait), reversed and its module removed
(reverse), or forced, with what this kernel then pins until reboot (force)."""

from __future__ import annotations

import errno

from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import (
    FORCE_PINS_ALL_FOREVER,
    FORCE_PINS_ALL_PRESENT,
    KLP,
    LivepatchError,
)


def settle(op, on_stall, changed):
    """Wait for the patching transition; on a stall, do what on_stall says."""
    if op.wait_transition():
        state = op.state()
        if state is None:
            op.fail(LivepatchError("insmod_failed", "%s vanished during its transition" % op.name))
        return op.finish("applied", changed)

    stalled = op.stalled(1)
    if on_stall == "wait":
        op.fail(
            LivepatchError(
                "transition_stalled",
                "%s: transition still running after %ss; left running (on_stall=wait)" % (op.name, op.timeout),
                stalled_tasks=stalled,
            )
        )
    if on_stall == "force":
        return force(op, stalled, changed)

    # reverse: write 0 during our own transition reverses it; the stalled tasks still run old code,
    # so the reversal completes and the module can go.
    try:
        op.p.write("%s/%s/enabled" % (KLP, op.name), "0")
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: it completed meanwhile or is already unpatching
            raise
    if not op.wait_transition():
        op.fail(
            LivepatchError(
                "transition_stalled",
                "%s: transition stalled and its reversal did not complete either" % op.name,
                stalled_tasks=stalled,
                reversed=False,
            )
        )
    state = op.state()
    if state is not None and state["enabled"]:
        # The transition completed just before the reversal was written: the patch is applied after all.
        return op.finish("applied", changed)
    op.rmmod()
    op.fail(
        LivepatchError(
            "transition_stalled",
            "%s: transition stalled after %ss, reversed and removed" % (op.name, op.timeout),
            stalled_tasks=stalled,
            reversed=True,
        )
    )


def force(op, stalled, changed):
    """Force the stalled patching transition, then report which patches this kernel now keeps until reboot."""
    lp = op.lp
    present = lp.patches()
    before = [p["name"] for p in present]
    semantics = lp.force_semantics(lp.lifecycle(before), present)
    op.p.write("%s/%s/force" % (KLP, op.name), "1")
    if not op.wait_transition():
        op.fail(
            LivepatchError(
                "transition_stalled", "%s: forced transition did not complete" % op.name, stalled_tasks=stalled
            )
        )
    # Evidence first: patches a forced replace freed keep their module's reference. Then the kernel's rule for
    # patches still enabled (pre-6.0 kernels pin every patch present at the force).
    pinned = [m["name"] for m in lp.pinned_modules()]
    if semantics in (FORCE_PINS_ALL_PRESENT, FORCE_PINS_ALL_FOREVER):
        pinned = sorted(set(pinned) | set(before))
    op.result.update(forced=True, force_semantics=semantics, pinned=pinned, stalled_tasks=stalled)
    if pinned:
        op.warn("the forced transition pinned %s until reboot (%s)" % (", ".join(pinned), semantics))
    return op.finish("applied", changed)
