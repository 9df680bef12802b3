# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the patch module, filling backend/sim_root from the host vars klp_backend/klp_sim_root, and for a
simulated host the path of the simulated kernel's code (which therefore never travels to a real host).

With state=present and src on the controller (remote_src=false), the .ko's bytes ride along in the module's
arguments: the module checks them, writes the copy and loads it in one run on the host. Copying first (as the
copy module does: a stat, a transfer, a chmod) costs several round trips per host before the load starts."""

from __future__ import annotations

import base64
import os

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

HOST_VAR_DEFAULTS = (("backend", "klp_backend"), ("sim_root", "klp_sim_root"))


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = True
    loads_patches = True  # the patch module; patch_info only reads

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        for option, var in HOST_VAR_DEFAULTS:
            if args.get(option) is None and task_vars.get(var) is not None:
                args[option] = self._templar.template(task_vars[var])
        if args.get("backend") == "sim" and not args.get("sim_kernel"):
            from ansible_collections.klpfleet.livepatch.plugins.module_utils import _primitives

            args["sim_kernel"] = os.path.join(os.path.dirname(_primitives.__file__), "_sim_kernel.py")
        if self._task.async_val and hasattr(self._connection, "spawn_isolated_child"):  # a Mitogen connection
            # Mitogen runs async jobs in an isolated child that never finishes importing this collection's
            # module_utils (the job hangs until its time limit): say so at once instead.
            return self._refused(
                result,
                args,
                "invalid_argument",
                "async is not supported for klpfleet.livepatch modules under Mitogen's strategy; "
                "run the task without async, or the play with Ansible's own strategy",
            )
        for private in ("content", "loader"):
            if args.pop(private, None) is not None:
                return self._refused(
                    result, args, "invalid_argument", "%s is set by the action plugin, not by hand" % private
                )
        if args.get("state", "present") == "present" and args.get("src") and not self._remote_src(args):
            try:
                args["src"], args["content"] = self._controller_ko(args["src"])
            except AnsibleError as exc:
                return self._refused(result, args, "source_unreadable", to_text(exc.message))
        if self._keeps_for_boot(args):
            from ansible_collections.klpfleet.livepatch.plugins.module_utils._boot import bundle

            args["loader"] = base64.b64encode(bundle()).decode("ascii")
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        result.update(
            self._execute_module(
                module_name=self._task.resolved_action, module_args=args, task_vars=task_vars, wrap_async=wrap_async
            )
        )
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _remote_src(self, args):
        from ansible.module_utils.parsing.convert_bool import boolean

        return boolean(args.get("remote_src", False), strict=False)

    def _keeps_for_boot(self, args):
        """A real host that will keep the patch for boot gets the boot loader with it (a simulated host's loader
        runs in `klpfleet sim host reboot`)."""
        from ansible.module_utils.parsing.convert_bool import boolean

        return (
            self.loads_patches
            and args.get("state", "present") == "present"
            and boolean(args.get("persist", True), strict=False)
            and args.get("backend", "sysfs") != "sim"
        )

    def _controller_ko(self, src):
        """(absolute path, base64 bytes) of the .ko on the controller."""
        from ansible_collections.klpfleet.livepatch.plugins.module_utils._modinfo import MAX_MODULE_BYTES

        path = self._find_needle("files", src)
        try:
            size = os.path.getsize(path)
            if size > MAX_MODULE_BYTES:  # the host code's own limit
                raise AnsibleError("%s is %d bytes, larger than any kernel module" % (path, size))
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise AnsibleError("cannot read %s on the controller: %s" % (path, exc.strerror)) from None
        return path, base64.b64encode(data).decode("ascii")

    def _refused(self, result, args, klp_error, msg):
        """A failure found on the controller, shaped like the module's own so the recorder reads it alike."""
        result.update(
            failed=True,
            changed=False,
            msg=msg,
            klp_error=klp_error,
            klp_module="patch",
            outcome="failed",
            name=args.get("name"),
            src=args.get("src"),
            host_clean=True,
            attempts=0,
        )
        return result
