# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""Apply and remove one livepatch on one host, never leaving it half-patched.

Both return a result dict and raise LivepatchError (with the partial result in `details`) on failure.
A failure is only reported after the host was checked: `host_clean` says whether any module or sysfs
directory of the patch is left.
"""

from __future__ import annotations

import contextlib
import errno
import os

from ansible_collections.klpfleet.livepatch.plugins.module_utils._artifact_checks import (
    check_source,
    different_build_error,
    same_build,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._kernel_log import (
    classify_insmod_failure,
    errno_from_tool,
    errno_name,
    livepatch_lines,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import (
    KLP,
    LIFECYCLE_LEGACY,
    Livepatch,
    LivepatchError,
    check_name,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._stall import settle

ON_STALL = ("reverse", "wait", "force")
REFCNT_WAIT = 15.0  # kpatch waits this long for a module's reference count to drop before rmmod
SIGNAL_EVERY = 15.0  # pre-5.1 kernels never signal stalled tasks themselves; kpatch writes `signal` after 15 s


class Operation(object):
    def __init__(self, prims, name, transition_timeout=60.0, busy_retries=5, busy_delay=2.0):
        self.lp = Livepatch(prims)
        self.p = prims
        self.name = name
        self.timeout = float(transition_timeout)
        self.busy_retries = int(busy_retries)
        self.busy_delay = float(busy_delay)
        self.cursor = prims.log_cursor()
        self.result = {
            "name": name,
            "attempts": 0,
            "transition_seconds": 0.0,
            "kernel_release": self.lp.kernel_release(),
        }

    # ------------------------------------------------------------------ helpers

    def state(self):
        return self.lp.patch_state(self.name)

    def kernel_log(self):
        return livepatch_lines(self.lp.log_since(self.cursor), self.name)

    def warn(self, text):
        self.result.setdefault("warnings", [])
        if text not in self.result["warnings"]:
            self.result["warnings"].append(text)

    def host_clean(self):
        return self.state() is None and not self.lp.module_loaded(self.name)

    def fail(self, error):
        """Finish a LivepatchError with what the host looks like now, then raise it."""
        error.details.setdefault("patch", self.state())
        error.details.setdefault("host_clean", self.host_clean())
        error.details["kernel_log"] = self.kernel_log()
        for key in ("attempts", "transition_seconds", "name", "kernel_release"):
            error.details.setdefault(key, self.result[key])
        for warning in self.result.get("warnings", []):
            error.details.setdefault("warnings", [])
            if warning not in error.details["warnings"]:
                error.details["warnings"].append(warning)
        raise error

    def finish(self, outcome, changed):
        self.result.update(
            outcome=outcome,
            changed=changed,
            patch=self.state(),
            loaded=self.lp.module_loaded(self.name),
            kernel_log=self.kernel_log(),
            host_clean=self.host_clean() if outcome in ("removed", "already_absent") else False,
        )
        return self.result

    def write_enabled(self, value):
        """Write enabled, retrying while another patch's transition holds the kernel (EBUSY)."""
        for attempt in range(self.busy_retries + 1):
            try:
                self.p.write("%s/%s/enabled" % (KLP, self.name), value)
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or attempt == self.busy_retries:
                    raise
                self.p.sleep(self.busy_delay)

    def wait_transition(self):
        """Wait for this patch's transition to end, however it ends: on 5.1+ an unpatched patch's directory goes,
        before 5.1 it stays with `enabled` 0. Before 5.1 the kernel never signals stalled tasks itself, so
        write its `signal` file every SIGNAL_EVERY seconds, as kpatch does."""
        signal = "%s/%s/signal" % (KLP, self.name)
        state = {"next_signal": self.p.now() + SIGNAL_EVERY}

        def done():
            if self.lp.transition_done(self.name):
                return True
            if self.p.now() >= state["next_signal"] and self.p.exists(signal):
                state["next_signal"] = self.p.now() + SIGNAL_EVERY
                with contextlib.suppress(OSError):
                    self.p.write(signal, "1")
                self.result["signaled"] = True
            return False

        ok, seconds = self.lp.wait_until(done, self.timeout)
        self.result["transition_seconds"] += round(seconds, 3)
        return ok

    def pinned(self):
        """This patch's module was pinned by a forced transition: no longer enabled, reference never dropped."""
        return any(m["name"] == self.name for m in self.lp.pinned_modules())

    def rmmod(self):
        """Remove the module. Returns True when a forced transition pinned it (it stays until reboot; its patch
        is disabled); raises on any other failure."""
        # The kernel drops the module reference just after the transition completes; kpatch gives it 15 s.
        self.lp.wait_until(lambda: (self.lp.module_refcnt(self.name) or 0) == 0, REFCNT_WAIT)
        rc, _dummy, stderr = self.p.run(["rmmod", self.name])
        if rc == 0 or not self.lp.module_loaded(self.name):
            return False
        if self.pinned():
            return True
        err = errno_from_tool(stderr)
        self.fail(
            LivepatchError(
                "in_use",
                "module %s is in use and cannot be removed" % self.name,
                errno=err,
                errno_name=errno_name(err),
                stderr=stderr.strip(),
            )
        )

    def stalled(self, target):
        return self.lp.stalled_tasks(target)


def apply_patch(
    prims,
    src,
    name=None,
    params=None,
    sha256=None,
    transition_timeout=60.0,
    on_stall="reverse",
    allow_force=False,
    busy_retries=5,
    busy_delay=2.0,
    check_mode=False,
    data=None,
):
    """Bring the patch to `present`: loaded, enabled, transition complete. `data`, the .ko's bytes, lets check
    mode judge a copy that was not written yet."""
    if on_stall not in ON_STALL:
        raise LivepatchError("invalid_argument", "on_stall must be one of %s" % ", ".join(ON_STALL))
    if on_stall == "force" and not allow_force:
        raise LivepatchError(
            "invalid_argument",
            "on_stall=force needs allow_force=true: a forced patch can never be removed before a reboot",
        )
    if name is not None:
        check_name(name)
    lp = Livepatch(prims)
    if not lp.supported():
        raise LivepatchError("livepatch_unsupported", "this kernel has no livepatch support (%s missing)" % KLP)
    unwritten = check_mode and not os.path.exists(src)
    if unwritten and data is None:
        return predict_without_source(prims, name, src)
    try:
        src_name, modinfo, sections = check_source(prims, src, sha256, data if unwritten else None)
    except LivepatchError as exc:
        # Refused before anything was loaded: this call left nothing behind.
        exc.details.update(
            host_clean=True, attempts=0, transition_seconds=0.0, name=name, kernel_release=lp.kernel_release()
        )
        raise
    name = name or src_name
    if name != src_name:
        raise LivepatchError("invalid_argument", "%s holds module %s, not %s" % (src, src_name, name), src=src)

    op = Operation(prims, name, transition_timeout, busy_retries, busy_delay)
    before = op.state()
    loaded = lp.module_loaded(name)
    op.result["before"] = {"patch": before, "loaded": loaded}
    if before is not None and before["enabled"]:
        # Loaded under this name: applied only if it is this build (a rebuilt fix keeps the name).
        if same_build(op, modinfo, sections) is False:
            op.fail(different_build_error(op))
        if not before["transition"]:
            return op.finish("already_applied", False)
    if loaded and (before is None or not before["enabled"]) and op.pinned():
        op.fail(
            LivepatchError(
                "forced_unremovable",
                "a forced transition pinned an earlier %s in memory: it cannot be loaded again before a reboot" % name,
                forced=True,
            )
        )
    if check_mode:
        return op.finish("applied", True)

    if before is not None and before["transition"]:
        # Ours, mid-transition from an earlier run: see it through rather than load twice.
        if not before["enabled"]:
            op.write_enabled("1")  # it was being unpatched: reverse back to patching
        return settle(op, on_stall, changed=True)

    if loaded:
        # Disabled or replaced earlier but never removed (before 5.1 a disabled patch even keeps its directory):
        # unload it and load the artifact, never write 1 to an old registration.
        op.rmmod()

    others = [n for n in lp.patch_names() if n != name]
    argv = ["insmod", src] + ["%s=%s" % (k, v) for k, v in sorted((params or {}).items())]
    while True:
        op.result["attempts"] += 1
        call_cursor = prims.log_cursor()
        rc, _dummy, stderr = prims.run(argv)
        if rc == 0:
            break
        lines = lp.log_since(call_cursor)
        error = classify_insmod_failure(name, rc, stderr, lines, getattr(prims, "log_error", None))
        if error.klp_error == "busy" and op.result["attempts"] <= op.busy_retries:
            prims.sleep(op.busy_delay)
            continue
        if error.klp_error == "refused" and op.state() is not None:
            # The kernel always cleans up after a refusal; a directory left over means it did not.
            error.details["host_clean"] = False
        op.fail(error)
    result = settle(op, on_stall, changed=True)
    # A cumulative (replace) patch frees every patch below it when its transition completes, silently.
    result["replaced"] = [n for n in others if lp.patch_state(n) is None]
    return result


def predict_without_source(prims, name, src):
    """Check mode before the .ko was ever copied (the copy itself was only predicted): by the patch's name
    when it is known, what would happen; without it, that the patch would be loaded."""
    op = Operation(prims, name)
    before = op.state() if name else None
    loaded = bool(name) and op.lp.module_loaded(name)
    op.result["before"] = {"patch": before, "loaded": loaded}
    op.result["warnings"] = ["check mode: %s is not on the host yet; predicted from the patch's name" % src]
    if before is not None and before["enabled"] and not before["transition"]:
        return op.finish("already_applied", False)
    if not name:
        op.result.update(outcome="applied", changed=True, patch=None, loaded=False, kernel_log=[], host_clean=False)
        return op.result
    return op.finish("applied", True)


def remove_patch(
    prims, name, transition_timeout=60.0, busy_retries=5, busy_delay=2.0, on_stall="reverse", check_mode=False
):
    """Bring the patch to `absent`: disabled, unpatching transition complete, module removed. A module a forced
    transition pinned stays loaded until reboot; its patch is disabled and the result says `module_pinned`."""
    check_name(name)
    lp = Livepatch(prims)
    op = Operation(prims, name, transition_timeout, busy_retries, busy_delay)
    before = op.state()
    loaded = lp.module_loaded(name)
    op.result["before"] = {"patch": before, "loaded": loaded}
    if before is None and not loaded:
        return op.finish("already_absent", False)
    if (before is None or not before["enabled"]) and loaded and op.pinned():
        return finish_pinned(op, "already_absent", False)
    if check_mode:
        return op.finish("removed", True)
    if before is not None:
        if before["enabled"]:
            disable(op, lp)
        if not op.wait_transition():
            stalled = op.stalled(0)
            reversed_ = on_stall == "reverse" and reverse_unpatching(op)
            op.fail(
                LivepatchError(
                    "transition_stalled",
                    "%s: unpatching transition stalled after %ss%s"
                    % (name, op.timeout, "; reversed, the patch stays applied" if reversed_ else ""),
                    stalled_tasks=stalled,
                    reversed=reversed_,
                )
            )
    if op.rmmod():
        return finish_pinned(op, "removed", True)
    return op.finish("removed", True)


def disable(op, lp):
    """Write 0 to enabled. Before 5.1 only the newest enabled patch can be disabled (EBUSY with no transition
    running): that is its own error, not a busy kernel."""
    try:
        op.write_enabled("0")  # disables, or reverses our own patching transition
    except OSError as exc:
        patches = lp.patches() if exc.errno == errno.EBUSY else []
        legacy = lp.lifecycle([p["name"] for p in patches]) == LIFECYCLE_LEGACY
        if exc.errno == errno.EBUSY and legacy and not any(p["transition"] for p in patches):
            enabled = [p["name"] for p in patches if p["enabled"]]
            newer = enabled[enabled.index(op.name) + 1 :] if op.name in enabled else enabled
            op.fail(
                LivepatchError(
                    "not_on_top",
                    "this kernel (pre-5.1 lifecycle) disables only the newest patch: remove %s first"
                    % ", ".join(newer or ["the newer patches"]),
                    errno=exc.errno,
                    errno_name=errno_name(exc.errno),
                    newer_patches=newer,
                )
            )
        op.fail(
            LivepatchError(
                "busy" if exc.errno == errno.EBUSY else "disable_failed",
                "cannot disable %s: %s" % (op.name, exc.strerror),
                errno=exc.errno,
                errno_name=errno_name(exc.errno),
            )
        )


def reverse_unpatching(op):
    """Back a stalled unpatching transition out to patched. Only while it is still our unpatching transition:
    before 5.1 writing 1 to a patch that finished unpatching would enable it again."""
    state = op.state()
    if state is None or not state["transition"] or state["enabled"]:
        return False
    with contextlib.suppress(OSError):
        op.p.write("%s/%s/enabled" % (KLP, op.name), "1")
    op.wait_transition()
    state = op.state()
    return state is not None and bool(state["enabled"])


def finish_pinned(op, outcome, changed):
    op.warn(
        "a forced transition pinned the module %s: its patch is disabled, the module stays loaded until reboot"
        % op.name
    )
    result = op.finish(outcome, changed)
    result.update(module_pinned=True, host_clean=False)
    return result
