"""Where the klpfleet.livepatch collection lives, for the controller's own use of it.

In a checkout it is `collections/`; an installed klpfleet carries a copy as package data
(`klpfleet/_collections`). The controller runs playbooks with this path as a collections path, and
imports the collection's standard-library module_utils (the simulator, the host operations) from it.
It is deliberately not an importable package of the distribution: a second finder for the
`ansible_collections` namespace would fight Ansible's own collection loader.
"""

from __future__ import annotations

import sys
from pathlib import Path

COLLECTION = ("ansible_collections", "klpfleet", "livepatch")


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


def ensure_importable() -> None:
    """Make `ansible_collections.klpfleet.livepatch.plugins.module_utils` importable in this process."""
    path = str(collections_path())
    if path not in sys.path:
        sys.path.append(path)
