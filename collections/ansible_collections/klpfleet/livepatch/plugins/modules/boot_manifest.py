#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: boot_manifest
short_description: Take blocked livepatches out of what a host loads at boot
version_added: 0.11.0
description:
  - Removes the named builds (by sha256) from the boot manifest M(klpfleet.livepatch.patch) keeps, for every kernel
    release the host keeps patches for, and deletes their kept C(.ko) files, so that the boot loader never loads
    them again. It neither loads nor unloads anything in the running kernel.
  - klpfleet's gather and apply playbooks run it with the host var C(klp_blocked), the sha256 of every patch blocked
    with C(klpfleet patch block).
author:
  - klpfleet contributors (@klpfleet)
options:
  drop:
    description: The sha256 (64 hex digits) of each build to take out of the manifest.
    type: list
    elements: str
    required: true
  persist_dir:
    description:
      - Where M(klpfleet.livepatch.patch) keeps patches for boot.
      - Defaults to C(/var/lib/klpfleet/boot), or C(boot) in O(sim_root) on simulated hosts.
    type: path
extends_documentation_fragment:
  - klpfleet.livepatch.backend
attributes:
  check_mode:
    description: Reports what it would drop and changes nothing.
    support: full
  diff_mode:
    description: No diff is shown.
    support: none
  platform:
    description: Target hosts running Linux, or simulated hosts.
    support: full
    platforms: linux
seealso:
  - module: klpfleet.livepatch.patch
"""

EXAMPLES = r"""
- name: Take blocked patches out of the boot manifest
  klpfleet.livepatch.boot_manifest:
    drop: "{{ klp_blocked }}"
  become: true
  when: klp_blocked | default([]) | length > 0
"""

RETURN = r"""
klp_module:
  description: Always V(boot_manifest), so that a callback can tell this module's results apart however they reach it.
  returned: always
  type: str
  sample: boot_manifest
klp_error:
  description: V(invalid_argument) for a malformed sha256, V(install_failed) when a manifest cannot be read or written.
  returned: failure
  type: str
  sample: install_failed
dropped:
  description: The entries taken out (would be, in check mode).
  returned: success
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
  sample: [{"name": "livepatch_cve_2026_1234", "sha256": "0f3a...", "kernel_release": "6.1.0-56-amd64"}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.klpfleet.livepatch.plugins.module_utils import _persist as persist
from ansible_collections.klpfleet.livepatch.plugins.module_utils._codes import LivepatchError
from ansible_collections.klpfleet.livepatch.plugins.module_utils._module import BACKEND_ARGS


def main():
    module = AnsibleModule(
        argument_spec=dict(
            drop=dict(type="list", elements="str", required=True), persist_dir=dict(type="path"), **BACKEND_ARGS
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["backend"] == "sim" and not p["sim_root"]:
        module.fail_json(
            msg="backend=sim needs sim_root (or the host var klp_sim_root)",
            klp_error="invalid_argument",
            klp_module="boot_manifest",
        )
    directory = p["persist_dir"] or persist.default_dir(p["backend"], p["sim_root"])
    try:
        dropped = persist.drop(directory, p["drop"], check_mode=module.check_mode)
    except LivepatchError as exc:
        module.fail_json(msg=exc.msg, klp_error=exc.klp_error, klp_module="boot_manifest")
    except OSError as exc:
        module.fail_json(
            msg="cannot change %s: %s" % (directory, exc.strerror or exc),
            klp_error="install_failed",
            klp_module="boot_manifest",
        )
    module.exit_json(changed=bool(dropped), dropped=dropped, klp_module="boot_manifest")


if __name__ == "__main__":
    main()
