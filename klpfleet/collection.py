"""The one door from klpfleet into the klpfleet.livepatch collection: where it lives, and its module_utils.

In a checkout it is `collections/`; an installed klpfleet carries a copy as package data
(`klpfleet/_collections`). The controller runs playbooks with this path as a collections path, and uses the
collection's standard-library module_utils (the simulated kernel, the host operations, the table of error codes)
only through the functions here. It is deliberately not an importable package of the distribution: a second
finder for the `ansible_collections` namespace would fight Ansible's own collection loader.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

COLLECTION = ("ansible_collections", "klpfleet", "livepatch")
MODULE_UTILS = "ansible_collections.klpfleet.livepatch.plugins.module_utils"


def collections_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "collections", here / "_collections"):
        if candidate.joinpath(*COLLECTION, "galaxy.yml").is_file():
            return candidate
    raise RuntimeError("the klpfleet.livepatch collection is missing from this installation")


def playbooks_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "playbooks", here / "_playbooks"):
        if (candidate / "apply.yml").is_file():
            return candidate
    raise RuntimeError("klpfleet's playbooks are missing from this installation")


def module_utils_dir() -> Path:
    return collections_path().joinpath(*COLLECTION, "plugins", "module_utils")


def module_util(name: str) -> ModuleType:
    """One of the collection's module_utils (`_sim_kernel`, `_modinfo`, ...), imported as a member of its package
    (the collection goes on this process's import path), so its own imports of its siblings work."""
    ensure_importable()
    return importlib.import_module(f"{MODULE_UTILS}.{name}")


@cache
def standalone_module_util(name: str) -> ModuleType:
    """A module_util that imports only the standard library (`_codes`, `_sim_base`), loaded from its file without
    touching the import path: safe inside an ansible-playbook process (the recorder callback), where the
    `ansible_collections` namespace belongs to Ansible's collection loader."""
    spec = importlib.util.spec_from_file_location(f"klpfleet._collection.{name}", module_utils_dir() / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sim_contract() -> tuple[str, str]:
    """(the ELF section carrying a simulated module's spec, the kernel release of a simulated host by default),
    as the simulated kernel defines them."""
    base = standalone_module_util("_sim_base")
    return base.SPEC_SECTION, base.DEFAULT_KERNEL_RELEASE


def ensure_importable() -> None:
    """Put the collection on this process's import path (its module_utils import each other as a package)."""
    path = str(collections_path())
    if path not in sys.path:
        sys.path.append(path)
