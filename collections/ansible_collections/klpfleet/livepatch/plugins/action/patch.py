# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the patch module, filling backend/sim_root from the host vars klp_backend/klp_sim_root, and for a
simulated host the path of the simulated kernel's code (which therefore never travels to a real host)."""

from __future__ import annotations

import os

from ansible.plugins.action import ActionBase

HOST_VAR_DEFAULTS = (("backend", "klp_backend"), ("sim_root", "klp_sim_root"))


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = True

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
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        result.update(
            self._execute_module(
                module_name=self._task.resolved_action, module_args=args, task_vars=task_vars, wrap_async=wrap_async
            )
        )
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
