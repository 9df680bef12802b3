"""The options that choose hosts, the same on every command that takes them (rollout create, reconcile, rollback,
probe): an Ansible host pattern and an inventory group, both completed from the database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from klpfleet.cli import completion


def hosts_option(help_text: str) -> Callable[[Any], Any]:
    return click.option("--hosts", "pattern", metavar="PATTERN", help=help_text, shell_complete=completion.hosts)


def group_option(help_text: str = "Only hosts of this inventory group (or label group such as zone_a).") -> Any:
    return click.option("--group", help=help_text, shell_complete=completion.groups)
