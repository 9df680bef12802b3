"""Running real ansible-playbook / ansible-inventory processes from the tests, with the repo's ansible.cfg."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def ansible_env(db_url: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(Path(os.environ.get("TMPDIR", "/tmp")) / "klpfleet-ansible-tmp"),
    )
    if db_url:
        env["KLPFLEET_DB"] = db_url
    env.update(extra)
    return env


def playbook(
    inventory: Path | str,
    book: Path | str,
    *args: str,
    db_url: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(book), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**ansible_env(db_url), **(env or {})},
        timeout=timeout,
        check=False,
    )


def apply_ko(
    inventory: Path | str, ko: Path | str, sha256: str, *args: str, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """playbooks/apply.yml with this .ko, as an operator runs it by hand (`-e klp_patch_src=... -e ...sha256=...`)."""
    book = ROOT / "playbooks" / "apply.yml"
    return playbook(inventory, book, "-e", f"klp_patch_src={ko}", "-e", f"klp_patch_sha256={sha256}", *args, **kwargs)


def ansible_inventory(
    inventory: Path | str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`ansible-inventory -i INVENTORY ARGS` with the repo's ansible.cfg (the inventory plugin's way in)."""
    return subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(inventory), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**ansible_env(), **(env or {})},
        timeout=300,
        check=False,
    )
