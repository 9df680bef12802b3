#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: patch_info
short_description: Read a host's kernel livepatch state
version_added: 0.1.0
description:
  - Reads, and never changes, everything about livepatch on a host - the kernel release, whether livepatch is
    supported, every patch with its objects, stack order, replace and forced flags, the transition in progress with
    its stalled tasks, decoded taint flags, target-module loads a patch refused (from the kernel log), and whether
    module signatures are enforced or the kernel is locked down.
  - The same code reads the state for the C(klpfleet probe) command, so the two never disagree.
author:
  - klpfleet contributors (@klpfleet)
options:
  stalled_tasks:
    description: List the tasks holding up a transition in progress (reads every task's C(patch_state)).
    type: bool
    default: true
  persist_dir:
    description:
      - Where M(klpfleet.livepatch.patch) keeps patches for boot.
      - Defaults to C(/var/lib/klpfleet/boot), or C(boot) in O(sim_root) on simulated hosts.
    type: path
extends_documentation_fragment:
  - klpfleet.livepatch.backend
attributes:
  check_mode:
    description: Read-only; runs the same in check mode.
    support: full
  diff_mode:
    description: Nothing changes, so there is no diff.
    support: none
  platform:
    description: Target hosts running Linux, or simulated hosts.
    support: full
    platforms: linux
seealso:
  - module: klpfleet.livepatch.patch
"""

EXAMPLES = r"""
- name: Read livepatch state
  klpfleet.livepatch.patch_info:
  become: true
  register: klp

- name: Hosts where a module load was refused by a patch
  ansible.builtin.debug:
    var: klp.refused_module_loads
  when: klp.refused_module_loads | length > 0
"""

RETURN = r"""
klp_module:
  description: Always V(patch_info), so that a callback can tell this module's results apart however they reach it.
  returned: always
  type: str
  sample: patch_info
klp_error:
  description: V(state_unreadable) when the livepatch state cannot be read, V(invalid_argument) for bad arguments.
  returned: failure
  type: str
  sample: state_unreadable
kernel_release:
  description: The running kernel's release.
  returned: always
  type: str
  sample: 6.1.0-56-amd64
livepatch_supported:
  description: Whether C(/sys/kernel/livepatch) exists (CONFIG_LIVEPATCH).
  returned: always
  type: bool
  sample: true
lifecycle:
  description:
    - V(pre-5.1) (a disabled patch stays registered until rmmod; only the newest can be disabled) or V(5.1+), decided
      from what the patch directories hold; null while no patch is loaded.
  returned: always
  type: str
  sample: 5.1+
force_semantics:
  description: Which patches a forced transition pins on this kernel (see the patch module's C(force_semantics)).
  returned: always
  type: str
  sample: unsafe-only
stack_order_source:
  description:
    - Where the stack order comes from, V(sysfs) (the kernel's C(stack_order), 6.13+) or V(module_load_order)
      (C(/proc/modules), which outlives the kernel log); null with no patch.
  returned: always
  type: str
  sample: module_load_order
stack_order_conflict:
  description: The kernel log's "enabling patch" lines order the patches otherwise than the source used.
  returned: always
  type: bool
  sample: false
kernel_log:
  description: Whether the kernel log could be read (C(error) says why not) and whether its ring buffer had wrapped.
  returned: always
  type: dict
  sample: {"readable": true, "error": null, "wrapped": false}
patches:
  description:
    - Every patch with a sysfs directory, in stack order (oldest first), with its 1-based C(stack_order) and its
      C(stack_order_source). C(replace) is null before 6.11, objects' C(patched) before 6.0. C(forced) is whether a
      forced transition pinned the enabled patch (null when the kernel log cannot tell); C(build_id) is the loaded
      module's GNU build ID; C(functions) lists, per object, the kernel's C(<function>,<sympos>) directories (which
      patch is in effect for a function is the topmost in stack order that lists it).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "livepatch_cve_2026_1234", "enabled": true, "transition": false, "replace": null,
            "stack_order": 1, "stack_order_source": "module_load_order", "stack_order_estimated": true,
            "stack_order_conflict": false, "objects": {"vmlinux": true},
            "functions": {"vmlinux": ["cmdline_proc_show,1"]}, "forced": false, "module_refcnt": 1,
            "build_id": "ee1143d5f1d876dfbae8af4a6628ba7eaa27f6ff"}]
forced_modules:
  description:
    - Livepatch modules whose patch is disabled or was replaced but whose reference a forced transition never
      dropped (seen from C(/proc/modules)); they stay loaded until reboot.
  returned: always
  type: list
  elements: dict
  sample: []
transition:
  description: The transition in progress (patch, target, stalled tasks), or null.
  returned: always
  type: dict
  sample: {"patch": "livepatch_cve_2026_1234", "target": "patched", "stalled_tasks": []}
taint:
  description: C(/proc/sys/kernel/tainted) decoded.
  returned: always
  type: dict
  sample: {"value": 45056, "flags": "OEK", "names": ["oot_module", "unsigned_module", "livepatch"]}
signatures:
  description: Whether module signatures are enforced, and the lockdown mode.
  returned: always
  type: dict
  sample: {"enforced": false, "lockdown": "none"}
refused_module_loads:
  description: Target-module loads that a patch refused, from the kernel log.
  returned: always
  type: list
  elements: dict
  sample: [{"patch": "livepatch_net", "module": "virtio_net", "seq": 812, "seconds_since_boot": 5123.2,
            "callback_refused": true}]
boot_id:
  description: This boot's id (C(/proc/sys/kernel/random/boot_id)); it changes at every reboot.
  returned: always
  type: str
  sample: 5f1c7a0e-2b8e-4d7f-9a51-0c1d2e3f4a5b
booted_at:
  description: When this boot started, seconds since the epoch (C(btime) in C(/proc/stat)).
  returned: always
  type: int
  sample: 1795000000
boot:
  description:
    - What the host keeps for boot on its running kernel release (C(kept), names in stack order; null when the
      directory cannot be read) and what the boot loader did at this boot (C(loaded_at_boot), one result per kept
      patch; null when it did not run at this boot).
  returned: always
  type: dict
  sample: {"persist_dir": "/var/lib/klpfleet/boot", "kept": ["livepatch_cve_2026_1234"],
           "loaded_at_boot": [{"name": "livepatch_cve_2026_1234", "outcome": "applied", "seconds": 0.4}]}
log_cursor:
  description: The kernel log's last sequence number when the state was read.
  returned: always
  type: int
  sample: 812
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.klpfleet.livepatch.plugins.module_utils import _persist as persist
from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import Livepatch
from ansible_collections.klpfleet.livepatch.plugins.module_utils._module import BACKEND_ARGS, host_primitives


def main():
    module = AnsibleModule(
        argument_spec=dict(
            stalled_tasks=dict(type="bool", default=True), persist_dir=dict(type="path"), **BACKEND_ARGS
        ),
        supports_check_mode=True,
    )
    try:
        facts = Livepatch(host_primitives(module, "patch_info", read_only=True)).facts(
            with_tasks=module.params["stalled_tasks"]
        )
    except OSError as exc:
        module.fail_json(
            msg="cannot read livepatch state: %s" % exc, klp_error="state_unreadable", klp_module="patch_info"
        )
    p = module.params
    directory = p["persist_dir"] or persist.default_dir(p["backend"], p["sim_root"])
    facts["boot"] = persist.boot_facts(directory, facts["kernel_release"], facts["boot_id"])
    module.exit_json(changed=False, klp_module="patch_info", **facts)


if __name__ == "__main__":
    main()
