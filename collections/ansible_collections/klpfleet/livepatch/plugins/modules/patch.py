#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: patch
short_description: Load or remove a kernel livepatch module and wait for its transition
version_added: 0.1.0
description:
  - Manages one livepatch module on one host. V(present) loads it, waits until the kernel's patching transition
    completes and reports what the kernel did; V(absent) disables it, waits for the unpatching transition and
    removes the module.
  - Never leaves a host half-patched. A refusal by a pre-patch callback is verified clean (the kernel removed the
    patch) before it is reported. A transition that stalls is reversed and the module removed by default.
  - Failures carry a stable RV(klp_error) code; callers branch on it, never on the message.
  - Host vars C(klp_backend) and C(klp_sim_root) supply O(backend) and O(sim_root) when they are not given.
author:
  - klpfleet contributors (@klpfleet)
options:
  name:
    description:
      - Name of the livepatch (its module name, which is also its C(/sys/kernel/livepatch) directory).
      - Defaults to the name in O(src)'s C(.modinfo). Required with O(state=absent).
    type: str
  src:
    description:
      - Path of the livepatch C(.ko). Required with O(state=present).
      - On the controller (relative paths are looked up in the playbook's C(files/) as C(copy) does) unless
        O(remote_src=true). The action plugin sends the file with the module's arguments and the module writes
        it to O(remote_dir) as C(SHA256.ko) (mode 0400) after checking it, then loads that copy; copying,
        checking and loading are one module run on the host.
    type: path
  remote_src:
    description: O(src) is a path on the managed host, loaded from where it is; nothing is copied.
    type: bool
    default: false
  remote_dir:
    description:
      - Directory on the host for the copies of O(src), an absolute path. Created mode 0700 when missing; an
        existing one is used as it is (its mode is never changed) and refused when users other than its owner
        can write to it.
      - Defaults to C(/var/lib/klpfleet/patches), or C(patches) in O(sim_root) on simulated hosts.
      - With O(state=absent) and O(sha256), the copy C(SHA256.ko) there is deleted once the patch is removed.
    type: path
  content:
    description:
      - The C(.ko)'s bytes, base64. Set by the action plugin from O(src); not meant to be set by hand.
    type: str
  drop_from_boot:
    description:
      - Builds (by sha256) to take out of the boot manifest after the load, for every kernel release kept for, with
        their kept C(.ko) files (as M(klpfleet.livepatch.boot_manifest) does), so that no later boot loads them.
        klpfleet's apply playbook passes the host var C(klp_blocked), the patches blocked with C(klpfleet patch block).
      - Failing to drop them does not undo the load; the result says so in RV(boot_drop_error) with a warning.
    type: list
    elements: str
    default: []
    version_added: 0.11.0
  persist:
    description:
      - Keep the patch for boot. Once it is applied, its verified C(.ko) is kept in O(persist_dir) under the running
        kernel release with a manifest in stack order, and the boot loader (C(klpfleet-boot.service) on systemd
        hosts) loads it again whenever the host boots that release. A replace patch takes the place of every
        patch kept before it. With O(state=absent) the patch is taken out of the manifest.
      - A patch that was applied but could not be kept is reported with RV(persisted=false) and a warning.
    type: bool
    default: true
  persist_dir:
    description:
      - Where patches are kept for boot, an absolute path. Defaults to C(/var/lib/klpfleet/boot), or C(boot) in
        O(sim_root) on simulated hosts. Created mode 0700; refused when users other than its owner can write to it.
    type: path
  loader:
    description:
      - The boot loader's zip archive, base64. Set by the action plugin; not meant to be set by hand.
    type: str
  state:
    description:
      - V(present) - loaded, enabled, transition complete.
      - V(absent) - disabled, transition complete, module removed.
    type: str
    choices: [present, absent]
    default: present
  params:
    description: Module parameters passed to C(insmod).
    type: dict
    default: {}
  sha256:
    description:
      - Refuse to load a file whose SHA-256 differs (64 hex digits). Checked before the copy is written and
        again right before the load.
    type: str
  transition_timeout:
    description: Seconds to wait for a transition to complete before O(on_stall) applies.
    type: float
    default: 60
  on_stall:
    description:
      - What to do when the patching transition does not complete within O(transition_timeout).
      - V(reverse) - write 0 to C(enabled) (reversing the transition), wait until it is undone and remove the module.
      - V(wait) - leave the transition running and report the stall.
      - V(force) - force the remaining tasks; needs O(allow_force=true). A forced patch can never be removed
        before a reboot.
      - With O(state=absent), V(reverse) re-enables the patch when its unpatching transition stalls, so the host
        keeps the state it had.
    type: str
    choices: [reverse, wait, force]
    default: reverse
  allow_force:
    description: Permit O(on_stall=force).
    type: bool
    default: false
  busy_retries:
    description: How often to retry while another patch's transition is in progress (C(EBUSY)).
    type: int
    default: 5
  busy_delay:
    description: Seconds between those retries.
    type: float
    default: 2
extends_documentation_fragment:
  - klpfleet.livepatch.backend
attributes:
  check_mode:
    description: Reports what would change (loaded, enabled, transition) without touching the kernel.
    support: full
  diff_mode:
    description: Shows the patch's loaded/enabled/transition facets before and after.
    support: full
  platform:
    description: Target hosts running Linux with CONFIG_LIVEPATCH, or simulated hosts.
    support: full
    platforms: linux
notes:
  - Needs root on real hosts (C(become=true)).
  - Refusals are safe (the kernel removed the patch); a reversed stall leaves the host as it was before the load.
seealso:
  - module: klpfleet.livepatch.patch_info
"""

EXAMPLES = r"""
- name: Apply a livepatch from the controller, backing the transition out if it stalls
  klpfleet.livepatch.patch:
    src: patches/livepatch_cve_2026_1234.ko
    sha256: "{{ patch_sha256 }}"
    state: present
    transition_timeout: 60
  become: true
  register: lp
  # A refusal is safe (the kernel removed the patch): carry on. Anything else stops this host.
  failed_when: lp.klp_error is defined and lp.klp_error != 'refused'

- name: Say which hosts refused it, and why
  ansible.builtin.debug:
    msg: "{{ lp.name }} refused by {{ lp.refused_object }} ({{ lp.errno_name }})"
  when: lp.klp_error is defined

- name: Remove it again
  klpfleet.livepatch.patch:
    name: livepatch_cve_2026_1234
    state: absent
  become: true
  when: lp.klp_error is not defined
"""

RETURN = r"""
outcome:
  description: What happened.
  returned: always
  type: str
  sample: applied
  choices: [applied, already_applied, removed, already_absent, refused, stalled, failed]
klp_error:
  description:
    - Stable failure code; branch on it, never on the message.
      - V(refused) - a pre-patch callback refused the patch; the kernel removed it.
      - V(transition_stalled) - tasks kept sleeping in a function being patched past the timeout.
      - V(busy) - another patch's transition kept running past the retries.
      - V(incompatible_state) - the patch's system states conflict with an installed patch.
      - V(not_livepatch) - the module is not marked as a livepatch.
      - V(vermagic_mismatch) - the module was built for another kernel.
      - V(signature_rejected) - the kernel requires a module signature it can verify.
      - V(lockdown) - the kernel is locked down and refuses unsigned modules.
      - V(checksum_mismatch) - the file on the host differs from the expected sha256.
      - V(in_use) - the module cannot be removed while something holds it.
      - V(forced_unremovable) - a forced transition pinned the patch's module; it stays loaded until a reboot.
      - V(different_build) - a different build of the patch is loaded under the same name.
      - V(not_on_top) - this kernel (pre-5.1 lifecycle) disables only the newest patch; newer ones must go first.
      - V(livepatch_unsupported) - the kernel has no livepatch support.
      - V(invalid_argument) - the task's arguments contradict each other or are missing.
      - V(source_unreadable) - the .ko cannot be read (on the controller or the host) or has no module name.
      - V(install_failed) - the .ko could not be written to (or deleted from) the host's patch directory.
      - V(state_unreadable) - the kernel's livepatch state cannot be read.
      - V(disable_failed) - writing 0 to the patch's enabled file failed.
      - V(insmod_failed) - the module load failed with another errno.
  returned: failure
  type: str
  sample: refused
  choices:
    - refused
    - transition_stalled
    - busy
    - incompatible_state
    - not_livepatch
    - vermagic_mismatch
    - signature_rejected
    - lockdown
    - checksum_mismatch
    - in_use
    - forced_unremovable
    - different_build
    - not_on_top
    - livepatch_unsupported
    - invalid_argument
    - source_unreadable
    - install_failed
    - state_unreadable
    - disable_failed
    - insmod_failed
klp_module:
  description: Always V(patch), so that a callback can tell this module's results apart however they reach it
    (an async task's result collected by C(async_status), for example).
  returned: always
  type: str
  sample: patch
kernel_release:
  description: The running kernel's release.
  returned: always
  type: str
  sample: 6.1.0-56-amd64
loaded:
  description: Whether the patch's module is loaded after the call.
  returned: success
  type: bool
  sample: true
src:
  description: The C(.ko) path the failure concerns.
  returned: when the source file was refused
  type: str
  sample: /var/lib/klpfleet/patches/livepatch_cve_2026_1234.ko
sha256:
  description: The sha256 of the C(.ko) that was sent (its copy on the host is C(remote_dir/SHA256.ko)).
  returned: when O(src) was sent from the controller
  type: str
  sample: 8568e04b8634353d25a208462fc5b0436012b8f6fbe21c02eed89c872a40e823
path:
  description: Where the copy of the C(.ko) is on the host.
  returned: when O(src) was sent from the controller, or when O(state=absent) deleted a copy
  type: str
  sample: /var/lib/klpfleet/patches/8568e04b8634353d25a208462fc5b0436012b8f6fbe21c02eed89c872a40e823.ko
copied:
  description: The copy was written (or, with O(state=absent), deleted) by this run.
  returned: when O(src) was sent from the controller, or O(state=absent) was given O(sha256)
  type: bool
  sample: true
expected_sha256:
  description: The sha256 the task asked for.
  returned: when klp_error is checksum_mismatch
  type: str
  sample: 8568e04b8634353d25a208462fc5b0436012b8f6fbe21c02eed89c872a40e823
actual_sha256:
  description: The sha256 of the file found on the host.
  returned: when klp_error is checksum_mismatch
  type: str
  sample: dfdce3b0b5f3a1e1f2c1a5e3c0d9c6f7e1a2b3c4d5e6f708192a3b4c5d6e7f80
vermagic:
  description: The module's vermagic.
  returned: when klp_error is vermagic_mismatch
  type: str
  sample: 6.1.0-55-amd64 SMP preempt mod_unload modversions
diff:
  description: The patch's loaded/enabled/transition facets before and after, in diff mode.
  returned: when diff mode is on
  type: dict
  sample: {"before": {"loaded": false, "enabled": null, "transition": null},
           "after": {"loaded": true, "enabled": true, "transition": false}}
name:
  description: The livepatch's name.
  returned: always
  type: str
  sample: livepatch_cve_2026_1234
patch:
  description:
    - The patch's sysfs state after the call, or null when it has no directory. C(functions) lists, per object,
      the kernel's C(<function>,<sympos>) directories.
  returned: always
  type: dict
  sample: {"name": "livepatch_cve_2026_1234", "enabled": true, "transition": false, "replace": null,
           "stack_order": null, "objects": {"vmlinux": true}, "functions": {"vmlinux": ["cmdline_proc_show,1"]}}
transition_seconds:
  description: Host seconds spent waiting for transitions.
  returned: always
  type: float
  sample: 0.4
attempts:
  description: How many times C(insmod) was run (retries on EBUSY included).
  returned: always
  type: int
  sample: 1
kernel_log:
  description: The livepatch lines of the kernel log this call caused.
  returned: always
  type: list
  elements: str
  sample:
    - "livepatch: enabling patch 'livepatch_cve_2026_1234'"
    - "livepatch: 'livepatch_cve_2026_1234': patching complete"
host_clean:
  description: After a failure or a removal - true when no module and no sysfs directory of this patch is left.
  returned: always
  type: bool
  sample: true
refused_object:
  description: The object (C(vmlinux) or a module) whose pre-patch callback refused.
  returned: when klp_error is refused
  type: str
  sample: vmlinux
errno:
  description: The errno behind the failure.
  returned: when known
  type: int
  sample: 19
errno_name:
  description: Its symbolic name.
  returned: when known
  type: str
  sample: ENODEV
stalled_tasks:
  description: Tasks that kept the transition from completing (pid, tid, comm, patch_state, kernel stack).
  returned: when klp_error is transition_stalled, or when a transition was forced
  type: list
  elements: dict
  sample: [{"pid": 1042, "tid": 1042, "comm": "db_writer", "patch_state": 0, "stack": ["[<0>] do_io+0x20/0x100"]}]
reversed:
  description: Whether a stalled transition was reversed.
  returned: when klp_error is transition_stalled
  type: bool
  sample: true
forced:
  description: The transition was forced.
  returned: when on_stall=force was used
  type: bool
  sample: true
pinned:
  description:
    - The patches whose module this kernel now keeps loaded until reboot because of the force. Kernels since 6.0
      pin only the patches a forced replace patch replaced; 5.1 to 5.19 pin every patch present; older kernels
      every patch until reboot (C(force_semantics)).
  returned: when on_stall=force was used
  type: list
  elements: str
  sample: []
force_semantics:
  description: Which patches a force pins on this kernel, V(unsafe-only), V(all-present) or V(all-until-reboot).
  returned: when on_stall=force was used
  type: str
  sample: unsafe-only
module_pinned:
  description:
    - The patch is disabled (its code no longer runs) but a forced transition pinned its module, which stays
      loaded until reboot.
  returned: when state=absent met a pinned module
  type: bool
  sample: true
identity:
  description:
    - The GNU build IDs (else srcversions) of the artifact and of the module loaded under the same name, compared
      to decide V(already_applied) versus RV(klp_error=different_build).
  returned: when a module of that name was already enabled
  type: dict
  sample: {"artifact_build_id": "ee1143d5f1d876dfbae8af4a6628ba7eaa27f6ff",
           "loaded_build_id": "ee1143d5f1d876dfbae8af4a6628ba7eaa27f6ff"}
signaled:
  description: The patch's C(signal) file was written to wake stalled tasks (kernels before 5.1 never do it).
  returned: when it was
  type: bool
  sample: true
persisted:
  description:
    - Whether the patch is kept for boot after this run (with O(state=absent), whether it was taken out of the
      manifest). False with a warning when it was applied but could not be kept.
  returned: when O(persist=true) and the patch is applied or removed
  type: bool
  sample: true
boot_dropped:
  description: The builds O(drop_from_boot) took out of the boot manifest (would, in check mode).
  returned: when O(drop_from_boot) is set and the patch is applied
  type: list
  elements: dict
  contains:
    name:
      description: The patch's module name.
      type: str
    sha256:
      description: The build's sha256.
      type: str
    kernel_release:
      description: The kernel release whose manifest held it.
      type: str
  version_added: 0.11.0
boot_drop_error:
  description: Why the builds in O(drop_from_boot) could not be taken out of the boot manifest.
  returned: when dropping them failed
  type: str
  version_added: 0.11.0
persist_error:
  description: Why an applied patch could not be kept for boot.
  returned: when it could not
  type: str
  sample: "cannot keep livepatch_fix for boot: No space left on device"
kernel_log_unreadable:
  description: Why the kernel log could not be read; without it a pre-patch refusal looks like any other failure.
  returned: when the log could not be read during a failed load
  type: str
  sample: "/dev/kmsg: Operation not permitted"
"""

import os
import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.klpfleet.livepatch.plugins.module_utils import _artifact as artifact
from ansible_collections.klpfleet.livepatch.plugins.module_utils import _persist as persist
from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import LivepatchError
from ansible_collections.klpfleet.livepatch.plugins.module_utils._module import BACKEND_ARGS, host_primitives
from ansible_collections.klpfleet.livepatch.plugins.module_utils._operations import apply_patch, remove_patch

FAILURE_OUTCOMES = {"refused": "refused", "transition_stalled": "stalled"}


def summary(state, loaded):
    """The facets of a patch that `changed` and `diff` are computed from."""
    if state is None:
        return {"loaded": bool(loaded), "enabled": None, "transition": None}
    return {"loaded": True, "enabled": state["enabled"], "transition": state["transition"]}


def remote_dir(p):
    return p["remote_dir"] or artifact.default_dir(p["backend"], p["sim_root"])


def persist_dir(p):
    return p["persist_dir"] or persist.default_dir(p["backend"], p["sim_root"])


def keep_for_boot(module, result, src, data):
    """After a successful load: the patch (and the loader) kept for boot. Failing to keep it does not undo the
    load: the patch runs, the result says it will not survive a reboot."""
    p = module.params
    try:
        if data is None:
            with open(src, "rb") as f:
                data = f.read()
        state = result.get("patch") or {}
        changed = persist.keep(
            persist_dir(p),
            result["kernel_release"],
            result["name"],
            artifact.checked_sha256(data, p["sha256"]),
            data,
            params=p["params"],
            replace=bool(state.get("replace")),
            replaced=result.get("replaced") or [],
            check_mode=module.check_mode,
        )
        if p["loader"]:
            bundle = artifact.decode(p["loader"])
            wrote = persist.install_loader(persist_dir(p), bundle, sys.executable, check_mode=module.check_mode)
            changed = wrote or changed
        result.update(persisted=True)
        return changed
    except (OSError, LivepatchError) as exc:
        message = getattr(exc, "msg", None) or str(exc)
        module.warn("%s is applied but not kept for boot: %s" % (result["name"], message))
        result.update(persisted=False, persist_error=message)
        return False


def drop_from_boot(module, result):
    """After a successful load: the blocked builds taken out of the boot manifest. Whether any was."""
    try:
        dropped = persist.drop(persist_dir(module.params), module.params["drop_from_boot"], module.check_mode)
    except (OSError, LivepatchError) as exc:
        message = getattr(exc, "msg", None) or str(exc)
        module.warn("blocked patches are still kept for boot: %s" % message)
        result.update(boot_dropped=[], boot_drop_error=message)
        return False
    result.update(boot_dropped=dropped)
    return bool(dropped)


def forget_for_boot(module, result):
    p = module.params
    try:
        changed = persist.forget(persist_dir(p), result["kernel_release"], result["name"], module.check_mode)
        result.update(persisted=False)
        return changed
    except LivepatchError as exc:
        module.warn("%s is removed but still kept for boot: %s" % (result["name"], exc.msg))
        result.update(persisted=True, persist_error=exc.msg)
        return False


def predicted(target):
    if target == "present":
        return {"loaded": True, "enabled": True, "transition": False}
    return {"loaded": False, "enabled": None, "transition": None}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            src=dict(type="path"),
            remote_src=dict(type="bool", default=False),
            remote_dir=dict(type="path"),
            content=dict(type="str", no_log=True),
            persist=dict(type="bool", default=True),
            persist_dir=dict(type="path"),
            drop_from_boot=dict(type="list", elements="str", default=[]),
            loader=dict(type="str", no_log=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            params=dict(type="dict", default={}),
            sha256=dict(type="str"),
            transition_timeout=dict(type="float", default=60.0),
            on_stall=dict(type="str", default="reverse", choices=["reverse", "wait", "force"]),
            allow_force=dict(type="bool", default=False),
            busy_retries=dict(type="int", default=5),
            busy_delay=dict(type="float", default=2.0),
            **BACKEND_ARGS,
        ),
        required_if=[("state", "present", ["src"]), ("state", "absent", ["name"])],
        supports_check_mode=True,
    )
    p = module.params
    prims = host_primitives(module, "patch")
    common = dict(
        transition_timeout=p["transition_timeout"],
        busy_retries=p["busy_retries"],
        busy_delay=p["busy_delay"],
        check_mode=module.check_mode,
    )
    copy = {}
    try:
        if p["state"] == "present":
            src, data = p["src"], None
            if p["content"] is not None:
                # Sent from the controller: checked, then written where it is loaded from.
                try:
                    data = artifact.decode(p["content"])
                    sha256 = artifact.checked_sha256(data, p["sha256"])
                    path, copied = artifact.install(data, remote_dir(p), sha256, module.check_mode)
                except LivepatchError as exc:
                    # Refused before anything was loaded: this call left the kernel as it was.
                    exc.details.update(host_clean=True, attempts=0, transition_seconds=0.0)
                    raise
                copy = dict(sha256=sha256, path=path, copied=copied)
                src = path
            result = apply_patch(
                prims,
                src,
                name=p["name"],
                params=p["params"],
                sha256=p["sha256"],
                on_stall=p["on_stall"],
                allow_force=p["allow_force"],
                data=data,
                **common,
            )
            if p["persist"] and (data is not None or os.path.exists(src)):  # check mode may have neither yet
                copy["boot_changed"] = keep_for_boot(module, result, src, data)
            if p["drop_from_boot"]:
                copy["boot_changed"] = drop_from_boot(module, result) or copy.get("boot_changed", False)
        else:
            if p["on_stall"] == "force":
                raise LivepatchError(
                    "invalid_argument",
                    "on_stall=force applies to loading a patch; removing one reverses (reverse) or waits (wait)",
                    name=p["name"],
                )
            result = remove_patch(prims, p["name"], on_stall=p["on_stall"], **common)
            if p["persist"]:
                copy["boot_changed"] = forget_for_boot(module, result)
            if p["sha256"]:
                directory = remote_dir(p)
                copied = artifact.discard(directory, p["sha256"], module.check_mode)
                copy = dict(path=os.path.join(directory, artifact.sha256_hex(p["sha256"]) + ".ko"), copied=copied)
    except LivepatchError as exc:
        details = dict(exc.details)
        for warning in details.pop("warnings", []):
            module.warn(warning)  # Ansible shows them and returns them in the result's `warnings`
        # A failure changed the host unless it was verified back to where it started.
        changed = bool(details.get("attempts")) and not details.get("host_clean")
        changed = changed or bool(copy.get("copied"))
        copy.pop("boot_changed", None)
        module.fail_json(
            msg=exc.msg,
            klp_error=exc.klp_error,
            klp_module="patch",
            outcome=FAILURE_OUTCOMES.get(exc.klp_error, "failed"),
            changed=changed,
            **dict(details, name=details.get("name") or p["name"], **copy),
        )

    for warning in result.pop("warnings", []):
        module.warn(warning)
    was = result.pop("before")
    before = summary(was["patch"], was["loaded"])
    if module.check_mode:
        after = predicted(p["state"]) if result["changed"] else before
    else:
        after = summary(result["patch"], result["loaded"])
    boot_changed = bool(copy.pop("boot_changed", False))
    result["changed"] = before != after or bool(copy.get("copied")) or boot_changed
    result.update(copy)
    if module._diff:
        result["diff"] = dict(before=before, after=after, before_header=result["name"], after_header=result["name"])
    module.exit_json(klp_module="patch", **result)


if __name__ == "__main__":
    main()
