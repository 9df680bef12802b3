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

from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import (
    KLP,
    Livepatch,
    LivepatchError,
    classify_insmod_failure,
    errno_from_tool,
    errno_name,
    file_sha256,
    livepatch_lines,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._modinfo import ModinfoError, first, read_module_file

ON_STALL = ("reverse", "wait", "force")


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

    def host_clean(self):
        return self.state() is None and not self.lp.module_loaded(self.name)

    def fail(self, error):
        """Finish a LivepatchError with what the host looks like now, then raise it."""
        error.details.setdefault("patch", self.state())
        error.details.setdefault("host_clean", self.host_clean())
        error.details["kernel_log"] = self.kernel_log()
        for key in ("attempts", "transition_seconds", "name", "kernel_release"):
            error.details.setdefault(key, self.result[key])
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
        done, seconds = self.lp.wait_until(lambda: self.lp.transition_done(self.name), self.timeout)
        self.result["transition_seconds"] += round(seconds, 3)
        return done

    def wait_gone(self):
        done, seconds = self.lp.wait_until(lambda: self.lp.gone(self.name), self.timeout)
        self.result["transition_seconds"] += round(seconds, 3)
        return done

    def rmmod(self):
        # The kernel drops the module reference just after the directory goes; give it a moment.
        self.lp.wait_until(lambda: (self.lp.module_refcnt(self.name) or 0) == 0, 2.0)
        rc, _dummy, stderr = self.p.run(["rmmod", self.name])
        if rc == 0 or not self.lp.module_loaded(self.name):
            return
        forced = self.name in self.lp.forced_patches()
        if forced:
            self.fail(
                LivepatchError(
                    "forced_unremovable",
                    "%s was force-transitioned: its module can never be removed before a reboot" % self.name,
                    forced=True,
                    stderr=stderr.strip(),
                )
            )
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


def check_source(prims, src, sha256=None):
    """Name and modinfo of the .ko at src, refusing what can never load here."""
    try:
        modinfo, _dummy = read_module_file(src)
    except (OSError, ModinfoError) as exc:
        raise LivepatchError("source_unreadable", "cannot read %s: %s" % (src, exc), src=src) from None
    name = first(modinfo, "name")
    if not name:
        raise LivepatchError("source_unreadable", "%s has no module name in .modinfo" % src, src=src)
    if sha256 and file_sha256(src) != sha256.lower():
        raise LivepatchError(
            "checksum_mismatch",
            "%s does not match the expected sha256" % src,
            src=src,
            expected_sha256=sha256.lower(),
            actual_sha256=file_sha256(src),
        )
    if first(modinfo, "livepatch") != "Y":
        raise LivepatchError("not_livepatch", "%s (%s) is not a livepatch module" % (src, name), src=src)
    release = Livepatch(prims).kernel_release()
    vermagic = first(modinfo, "vermagic", "")
    if vermagic.split()[:1] != [release]:
        raise LivepatchError(
            "vermagic_mismatch",
            "%s was built for %s, this host runs %s" % (name, (vermagic.split() or ["?"])[0], release),
            src=src,
            vermagic=vermagic,
            kernel_release=release,
        )
    return name, modinfo


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
):
    """Bring the patch to `present`: loaded, enabled, transition complete."""
    if on_stall not in ON_STALL:
        raise LivepatchError("invalid_argument", "on_stall must be one of %s" % ", ".join(ON_STALL))
    if on_stall == "force" and not allow_force:
        raise LivepatchError(
            "invalid_argument",
            "on_stall=force needs allow_force=true: a forced patch can never be removed before a reboot",
        )
    lp = Livepatch(prims)
    if not lp.supported():
        raise LivepatchError("livepatch_unsupported", "this kernel has no livepatch support (%s missing)" % KLP)
    if check_mode and not os.path.exists(src):
        return predict_without_source(prims, name, src)
    try:
        src_name, _dummy = check_source(prims, src, sha256)
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
    op.result["before"] = {"patch": before, "loaded": lp.module_loaded(name)}
    if before is not None and before["enabled"] and not before["transition"]:
        return op.finish("already_applied", False)
    if check_mode:
        return op.finish("applied", True)

    if before is not None and before["transition"]:
        # Ours, mid-transition from an earlier run: see it through rather than load twice.
        if not before["enabled"]:
            op.write_enabled("1")  # it was being unpatched: reverse back to patching
        return settle(op, on_stall, changed=True)

    if before is None and lp.module_loaded(name):
        op.rmmod()  # disabled or replaced earlier but never removed: its module must go before it loads again

    argv = ["insmod", src] + ["%s=%s" % (k, v) for k, v in sorted((params or {}).items())]
    while True:
        op.result["attempts"] += 1
        call_cursor = prims.log_cursor()
        rc, _dummy, stderr = prims.run(argv)
        if rc == 0:
            break
        lines = lp.log_since(call_cursor)
        error = classify_insmod_failure(name, rc, stderr, lines)
        if error.klp_error == "busy" and op.result["attempts"] <= op.busy_retries:
            prims.sleep(op.busy_delay)
            continue
        if error.klp_error == "refused" and op.state() is not None:
            # The kernel always cleans up after a refusal; a directory left over means it did not.
            error.details["host_clean"] = False
        op.fail(error)
    return settle(op, on_stall, changed=True)


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
        op.p.write("%s/%s/force" % (KLP, op.name), "1")
        if not op.wait_transition():
            op.fail(
                LivepatchError(
                    "transition_stalled", "%s: forced transition did not complete" % op.name, stalled_tasks=stalled
                )
            )
        op.result["forced"] = True
        op.result["stalled_tasks"] = stalled
        return op.finish("applied", changed)

    # reverse: write 0 during our own transition reverses it; the stalled tasks still run old code,
    # so the reversal completes and the module can go.
    try:
        op.p.write("%s/%s/enabled" % (KLP, op.name), "0")
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: it completed meanwhile or is already unpatching
            raise
    if not op.wait_gone():
        op.fail(
            LivepatchError(
                "transition_stalled",
                "%s: transition stalled and its reversal did not complete either" % op.name,
                stalled_tasks=stalled,
                reversed=False,
            )
        )
    op.rmmod()
    op.fail(
        LivepatchError(
            "transition_stalled",
            "%s: transition stalled after %ss, reversed and removed" % (op.name, op.timeout),
            stalled_tasks=stalled,
            reversed=True,
        )
    )


def remove_patch(
    prims, name, transition_timeout=60.0, busy_retries=5, busy_delay=2.0, on_stall="reverse", check_mode=False
):
    """Bring the patch to `absent`: disabled, unpatching transition complete, module removed."""
    lp = Livepatch(prims)
    op = Operation(prims, name, transition_timeout, busy_retries, busy_delay)
    before = op.state()
    loaded = lp.module_loaded(name)
    op.result["before"] = {"patch": before, "loaded": loaded}
    if before is None and not loaded:
        return op.finish("already_absent", False)
    if check_mode:
        return op.finish("removed", True)
    if before is not None:
        try:
            if before["enabled"]:
                op.write_enabled("0")  # disables, or reverses our own patching transition
        except OSError as exc:
            op.fail(
                LivepatchError(
                    "busy" if exc.errno == errno.EBUSY else "disable_failed",
                    "cannot disable %s: %s" % (name, exc.strerror),
                    errno=exc.errno,
                    errno_name=errno_name(exc.errno),
                )
            )
        if not op.wait_gone():
            stalled = op.stalled(0)
            if on_stall == "reverse":
                with contextlib.suppress(OSError):
                    op.p.write("%s/%s/enabled" % (KLP, name), "1")  # back to patched: the state it had
                op.wait_transition()
            op.fail(
                LivepatchError(
                    "transition_stalled",
                    "%s: unpatching transition stalled after %ss%s"
                    % (name, op.timeout, "; reversed, the patch stays applied" if on_stall == "reverse" else ""),
                    stalled_tasks=stalled,
                    reversed=on_stall == "reverse",
                )
            )
    op.rmmod()
    return op.finish("removed", True)
