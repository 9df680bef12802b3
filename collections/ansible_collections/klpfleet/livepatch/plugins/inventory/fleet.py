# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet
short_description: Ansible inventory from the klpfleet database
version_added: 0.1.0
description:
  - Hosts with their connection vars, groups from the database's groups and labels, and keyed groups by kernel
    release and by patch state, e.g. every host where a patch is C(refused).
  - Built-in groups - C(<label>_<value>) for each label, C(kernel_<release>), and C(klp_<patch>_<state>).
  - Host vars - C(klp_kernel_release), C(klp_labels), C(klp_patch_states) (patch name to state) and each label
    by its own name, plus the stored connection and C(klp_*) vars.
  - Data from the database is never evaluated as a template.
  - The configuration file name must end in C(klpfleet.yml) or C(klpfleet.yaml).
requirements:
  - klpfleet installed in the controller's Python
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin.
    required: true
    type: str
    choices: [klpfleet.livepatch.fleet]
  db:
    description: Database URL or SQLite path; defaults to C(KLPFLEET_DB), then klpfleet's default database.
    type: str
    env:
      - name: KLPFLEET_DB
  patch_state_groups:
    description: Add the C(klp_<patch>_<state>) groups.
    type: bool
    default: true
"""

EXAMPLES = r"""
# fleet.klpfleet.yml
plugin: klpfleet.livepatch.fleet
db: postgresql://klpfleet@db.internal/klpfleet
keyed_groups:
  - key: klp_labels.rack
    prefix: rack
groups:
  needs_reboot: "['forced', 'pinned'] | intersect(klp_patch_states.values() | list) | length > 0"
compose:
  ansible_user: "'ops'"
"""

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.utils.unsafe_proxy import wrap_var


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "klpfleet.livepatch.fleet"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("klpfleet.yml", "klpfleet.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            from klpfleet.db.engine import connect
            from klpfleet.errors import KlpfleetError
            from klpfleet.inventory import export as inventory_export
        except ImportError as exc:
            raise AnsibleParserError("klpfleet.livepatch.fleet needs klpfleet installed: %s" % exc) from exc
        try:
            hosts = inventory_export.fleet_inventory(connect(self.get_option("db")))
        except KlpfleetError as exc:
            raise AnsibleParserError("klpfleet database: %s" % exc) from exc
        self._export = inventory_export  # klpfleet's one host-vars builder and group naming
        self.populate(hosts)

    def populate(self, hosts):
        strict = self.get_option("strict")
        state_groups = self.get_option("patch_state_groups")
        for h in hosts:
            name = self.inventory.add_host(h["name"])
            # klpfleet's one host-vars builder (the controller's frozen inventories use it too). Its values
            # are data: set here they stay untrusted, so Ansible never templates them.
            for key, value in self._export.host_vars(h).items():
                if isinstance(value, self._export.TrustedTemplate):
                    from ansible.template import trust_as_template

                    value = trust_as_template(str(value))
                else:
                    value = wrap_var(value)
                self.inventory.set_variable(name, key, value)
            self.inventory.set_variable(name, "klp_kernel_release", wrap_var(h["kernel_release"]))
            self.inventory.set_variable(name, "klp_labels", wrap_var(h["labels"]))
            self.inventory.set_variable(name, "klp_patch_states", wrap_var(h["patch_states"]))
            for key, value in h["labels"].items():
                self._group(name, "%s_%s" % (key, value))
            for group in h["groups"]:
                self._group(name, group)
            if h["kernel_release"]:
                self._group(name, "kernel_%s" % h["kernel_release"])
            if state_groups:
                for patch, state in h["patch_states"].items():
                    self._group(name, "klp_%s_%s" % (patch, state))
            hostvars = self.inventory.get_host(name).get_vars()
            self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)

    def _group(self, host, group):
        group = self.inventory.add_group(self._export.group_name(str(group)))
        self.inventory.add_child(group, host)
