# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the boot_manifest module, filling backend/sim_root from the host vars klp_backend/klp_sim_root."""

from __future__ import annotations

from ansible_collections.klpfleet.livepatch.plugins.action.patch import ActionModule as PatchAction


class ActionModule(PatchAction):
    loads_patches = False
