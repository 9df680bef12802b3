# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""What the collection's modules share: the backend options and building the primitive layer."""

from __future__ import annotations

from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import primitives_for

BACKEND_ARGS = dict(
    backend=dict(type="str", choices=["sysfs", "sim"]),
    sim_root=dict(type="path"),
    sim_kernel=dict(type="path"),
)


def host_primitives(module, klp_module, read_only=False):
    """The primitives for this host; commands run through the module with a C locale."""
    backend = module.params.get("backend") or "sysfs"
    if backend == "sim" and not module.params.get("sim_root"):
        module.fail_json(
            msg="backend=sim needs sim_root (or the host var klp_sim_root)",
            klp_error="invalid_argument",
            klp_module=klp_module,
        )

    def run_command(argv):
        return module.run_command(argv, environ_update={"LC_ALL": "C", "LANG": "C"})

    tool_paths = {}
    if backend == "sysfs":
        for tool in ("insmod", "rmmod", "modprobe"):
            path = module.get_bin_path(tool, required=False, opt_dirs=["/sbin", "/usr/sbin"])
            if path:
                tool_paths[tool] = path
    return primitives_for(
        backend,
        module.params.get("sim_root"),
        run_command=run_command,
        tool_paths=tool_paths,
        read_only=read_only,
        sim_kernel=module.params.get("sim_kernel"),
    )
