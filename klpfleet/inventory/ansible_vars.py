"""What ansible-core says a host's variables are (host, group and vars-plugin variables, vault secrets), at a
fraction of VariableManager's cost, and Ansible's warnings captured so an import can say in one line why a source
failed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from klpfleet.errors import UsageError


class InventoryVars:
    """A host's variables as ansible-playbook sees them from the inventory: group vars (inventory and vars
    plugins such as group_vars/ beside the source) merged in ansible's configured precedence, then the host's
    own vars and host_vars/. What VariableManager.get_vars() gives for a host without a play, minus facts
    (klpfleet keeps none of them), restricted to `keys` when given, and at a tenth of its cost: the group
    part depends only on the host's groups, so it is merged once per distinct set of groups, not per host.
    Merging is per variable, so keeping only some variables before merging gives the same values.
    (tests/test_inventory.py compares the two on an inventory with every kind of source.)"""

    def __init__(self, loader: Any, manager: Any, sources: list[str], keys: frozenset[str] | None = None) -> None:
        self.loader, self.manager, self.sources, self.keys = loader, manager, sources, keys
        # By the identity of a host's groups (the same objects for every host in them), so a host costs a
        # lookup, not a sort.
        self._by_groups: dict[tuple[int, ...], tuple[dict[str, Any], list[str]]] = {}
        self._hosts_have_plugin_vars: bool | None = None

    def _only(self, found: dict[str, Any]) -> dict[str, Any]:
        if self.keys is None or not found:
            return found
        return {k: v for k, v in found.items() if k in self.keys}

    def _plugins(self, entities: list[Any]) -> dict[str, Any]:
        from ansible.vars.plugins import get_vars_from_inventory_sources

        return self._only(get_vars_from_inventory_sources(self.loader, self.sources, entities, "task"))

    def _group_vars(self, groups: list[Any]) -> dict[str, Any]:
        from ansible import constants as C
        from ansible.inventory.helpers import get_group_vars
        from ansible.utils.vars import combine_vars

        all_group = self.manager.groups["all"]
        parts = {
            "all_inventory": lambda: self._only(all_group.get_vars()),
            "all_plugins_inventory": lambda: self._plugins([all_group]),
            "groups_inventory": lambda: self._only(get_group_vars(groups)),
            "groups_plugins_inventory": lambda: self._plugins(groups),
            # Playbook-adjacent vars need a playbook; an import has none (as VariableManager without a play).
            "all_plugins_play": dict,
            "groups_plugins_play": dict,
        }
        merged: dict[str, Any] = {}
        for entry in C.VARIABLE_PRECEDENCE:
            if entry in parts:
                merged = combine_vars(merged, parts[entry]())
        return merged

    def of(self, host: Any) -> tuple[dict[str, Any], list[str]]:
        """(the host's variables, the names of its groups)."""
        from ansible.utils.vars import combine_vars

        key = tuple(map(id, host.get_groups()))
        if key not in self._by_groups:
            self._by_groups[key] = self._for_groups(host.get_groups())
        merged, names = self._by_groups[key]
        # host.vars, not host.get_vars(): the magic vars it adds are Ansible's, never kept.
        own = self._only(host.vars) if self.keys is not None else host.get_vars()
        if own:
            merged = combine_vars(merged, own)
        if self._any_host_plugin_vars():
            found = self._plugins([host])
            if found:
                merged = combine_vars(merged, found)
        return merged, names

    def _for_groups(self, groups: list[Any]) -> tuple[dict[str, Any], list[str]]:
        from ansible.inventory.helpers import sort_groups

        ordered = sort_groups([g for g in groups if g.name != "all"])
        return self._group_vars(ordered), [g.name for g in groups]

    def _any_host_plugin_vars(self) -> bool:
        """Whether vars plugins (host_vars/ and the like) give any host anything: asked once for all hosts
        together, so that an inventory without host_vars does not pay one plugin round per host."""
        if self._hosts_have_plugin_vars is None:
            self._hosts_have_plugin_vars = bool(self._plugins(self.manager.get_hosts()))
        return self._hosts_have_plugin_vars


def load_vault_secrets(loader: Any) -> None:
    """The vault secrets ansible-playbook would use (ANSIBLE_VAULT_PASSWORD_FILE, ANSIBLE_VAULT_IDENTITY_LIST)."""
    from ansible import constants as C
    from ansible.cli import CLI
    from ansible.parsing.vault import VaultSecretsContext

    files = [C.DEFAULT_VAULT_PASSWORD_FILE] if C.DEFAULT_VAULT_PASSWORD_FILE else []
    secrets = []
    if files or C.DEFAULT_VAULT_IDENTITY_LIST:
        from ansible.errors import AnsibleError
        from ansible.utils.display import Display

        quiet = Display().warning
        Display().warning = lambda *args, **kwargs: None  # the error below says it all
        try:
            secrets = CLI.setup_vault_secrets(
                loader, vault_ids=C.DEFAULT_VAULT_IDENTITY_LIST, vault_password_files=files, ask_vault_pass=False
            )
        except AnsibleError as exc:
            raise UsageError(f"vault: {str(exc).splitlines()[0]}") from None
        finally:
            Display().warning = quiet
        loader.set_vault_secrets(secrets)
    if VaultSecretsContext.current(optional=True) is None:  # once per process, as Ansible's own CLIs do
        VaultSecretsContext.initialize(VaultSecretsContext(secrets))


def most_telling(warnings: list[str]) -> str:
    """Of Ansible's warnings (one per plugin that tried the source), the one that says what is wrong."""
    useful = [w for w in warnings if "No module named" not in w and "Failed to load inventory plugin" not in w]
    return f" ({(useful or warnings)[0]})" if warnings else ""


@contextlib.contextmanager
def captured_ansible_warnings() -> Iterator[list[str]]:
    """Ansible prints a multi-line warning per plugin that fails to parse a source; keep the first line of
    each instead, so a bad inventory is reported as one line."""
    from ansible.utils.display import Display

    display = Display()
    caught: list[str] = []

    def error_as_warning(msg: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
        text = str(getattr(exception, "message", None) or exception or msg or "")
        caught.append(" ".join(text.split("\n")[0].split()))

    def warning(msg: str, *_: Any, **__: Any) -> None:
        caught.append(" ".join(str(msg).split("\n")[0].split()))

    saved = display.__dict__.get("error_as_warning"), display.__dict__.get("warning")
    display.error_as_warning, display.warning = error_as_warning, warning
    try:
        yield caught
    finally:
        for name, value in zip(("error_as_warning", "warning"), saved, strict=True):
            if value is None:
                display.__dict__.pop(name, None)
            else:
                setattr(display, name, value)
