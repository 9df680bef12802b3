"""What klpfleet accepts as a host name, a kernel release, a livepatch object or function, wherever one arrives
from outside (an inventory, a host's report, a module result, an HTTP request, an operator's argument)."""

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


# A livepatch object (vmlinux or a module name) and a function as kallsyms names it; sysfs names a patched
# function's directory `<function>,<sympos>`.
# Characters of the reason a patch is blocked for (`klpfleet patch block`): a sentence and a ticket link.
MAX_BLOCK_REASON = 500
# A patch build as klpfleet names it: its sha256, lower-case hex (the file name of its kept copies).
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
OBJECT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,55}$")
FUNCTION_NAME_RE = re.compile(r"^[A-Za-z0-9_.$]{1,128}$")
FUNCTION_DIR_RE = re.compile(r"^[A-Za-z0-9_.$]{1,128},[0-9]{1,9}$")


def sysfs_functions(value: Any) -> dict[str, list[str]]:
    """A patch's functions per object as sysfs lists them, keeping only what sysfs could have listed (a host's
    report, or a row read back: a name that is not an object or a `function,sympos` is dropped)."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, list[str]] = {}
    for obj, funcs in list(value.items())[:256]:
        if isinstance(obj, str) and OBJECT_NAME_RE.match(obj) and isinstance(funcs, list):
            out[obj] = sorted({f for f in funcs[:10_000] if isinstance(f, str) and FUNCTION_DIR_RE.match(f)})
    return out
