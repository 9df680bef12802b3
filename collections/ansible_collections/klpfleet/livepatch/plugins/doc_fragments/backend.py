# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # The options every module of the collection shares: which kernel it talks to.
    DOCUMENTATION = r"""
options:
  backend:
    description:
      - V(sysfs) for a real kernel, V(sim) for a simulated host kept in O(sim_root).
      - Defaults to the host var C(klp_backend), else V(sysfs).
    type: str
    choices: [sysfs, sim]
  sim_root:
    description: Directory of the simulated host; defaults to the host var C(klp_sim_root).
    type: path
  sim_kernel:
    description:
      - Path of the simulated kernel's code on the managed host, for O(backend=sim). The action plugin sets it
        to the collection's own copy, so the simulator is never part of what is sent to a real host.
    type: path
"""
