"""The variables klpfleet hands a playbook run: checked in this one place, and written as data.

Every value comes from the database (a patch's name, sha256, where its .ko is kept) or from a host's report (the
names of patches stacked above another), and whoever can write either is not trusted to run code on the
controller. So each run's variables are checked here against what they may be (a kernel module name, 64 hex
digits, a file in the artifact store whose content has that sha256, a known stall policy, numbers), and they
reach Ansible as `!unsafe` text in the run's `env/extravars` file: never a command line, never a template.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

from klpfleet.errors import UsageError
from klpfleet.hoststate.module_results import is_module_name

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ON_STALL = ("reverse", "wait", "force")
NUMBERS = ("klp_transition_timeout", "klp_busy_retries", "klp_busy_delay")
BOOLEANS = ("klp_allow_force",)


class RunVarsError(UsageError):
    """A value klpfleet was about to hand a run is not what it may be: nothing ran."""


def kept_artifact(name: Any, sha256: Any) -> Path:
    """Where the registry keeps a patch's .ko, derived from its name and sha256 (never read from a row), and
    checked to hold exactly that content."""
    from klpfleet.registry.patches import artifact_store

    if not is_module_name(name):
        raise RunVarsError(f"patch name {str(name)[:80]!r} in the database is not a kernel module name")
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        raise RunVarsError(f"patch {name}: its sha256 in the database is not 64 hex digits")
    path = artifact_store() / sha256 / f"{name}.ko"
    try:
        with open(path, "rb") as f:
            found = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise RunVarsError(
            f"patch {name}@{sha256[:12]}: its kept copy {path} cannot be read ({exc.strerror}); "
            "`klpfleet patch add` the .ko again"
        ) from None
    if found != sha256:
        raise RunVarsError(f"patch {name}@{sha256[:12]}: its kept copy {path} has other content; add the .ko again")
    return path


def patch_vars(name: Any, sha256: Any) -> dict[str, Any]:
    """What apply.yml needs to load a registered patch."""
    return {"klp_patch_src": str(kept_artifact(name, sha256)), "klp_patch_sha256": sha256, "klp_patch_name": name}


def checked(extravars: dict[str, Any]) -> dict[str, Any]:
    """`extravars` as they may go to a run, or RunVarsError naming the first value that may not. Other keys (a
    test's own playbook) pass as they are: like every value, they reach Ansible as unsafe text."""
    from klpfleet.registry.patches import artifact_store

    for key, value in extravars.items():
        if key == "klp_patch_name" and not is_module_name(value):
            raise RunVarsError(f"{str(value)[:80]!r} is not a kernel module name; no run was started")
        if key == "klp_patch_sha256" and not (isinstance(value, str) and SHA256_RE.match(value)):
            raise RunVarsError("a patch's sha256 must be 64 hex digits; no run was started")
        if key == "klp_patch_src":
            store = artifact_store().resolve()
            if not isinstance(value, str) or Path(value).resolve().parent.parent != store:
                raise RunVarsError(f"{str(value)[:120]!r} is not a .ko in the artifact store ({store})")
        if key == "klp_on_stall" and value not in ON_STALL:
            raise RunVarsError(f"on-stall {str(value)[:40]!r} is not one of {', '.join(ON_STALL)}")
        if key in NUMBERS and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
        ):
            raise RunVarsError(f"{key} must be a non-negative number")
        if key in BOOLEANS and not isinstance(value, bool):
            raise RunVarsError(f"{key} must be true or false")
    return dict(extravars)
