"""What klpfleet accepts as a host name or a kernel release, wherever one arrives from outside (an inventory, a
host's report, a module result, an HTTP request, an operator's argument)."""

from __future__ import annotations

import re
from typing import Any

# Host names are stored and later handed to Ansible, SSH and the shell-free probe. They are never
# interpolated into a command, but a name no DNS or Ansible pattern could mean is refused up front.
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@\[\]-]{0,252}$")

# What `uname -r` can print. A host reporting anything else (control characters, a terminal escape sequence)
# is not believed: the value is never stored, and an event says what arrived.
KERNEL_RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$")


def valid_kernel_release(value: Any) -> bool:
    return isinstance(value, str) and bool(KERNEL_RELEASE_RE.match(value))
