"""Whether an inventory import can be skipped: the same static sources, read the same way, into a database
whose hosts nothing has changed since.

Parsing is most of an import's cost (ansible-core reads a 100,000-host INI file in 10 s or more), and most
imports are re-imports of an unchanged file. A fingerprint covers everything the parse depends on: every
byte of every source file and of the group_vars/host_vars beside it, the Ansible configuration that shapes
it (the config file, every ANSIBLE_* variable), the versions of ansible-core and klpfleet, and the import's
own options. Only static sources qualify: a script, an inventory plugin's config (it asks a cloud API),
vault-encrypted text or a symbolic link anywhere in the sources (what it points at can change while the link
does not) can give another answer from the same bytes, so those are always parsed.

The last import records its fingerprint in an `inventory.imported` event; the skip also needs that no host
was added, changed or removed since (by another import, for example).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from klpfleet import __version__
from klpfleet.db.models import Event

# Every way a host row comes or goes: an import, or the recorder meeting a host it did not know (a hand run).
HOST_EVENTS = ("host.added", "host.updated", "host.removed", "host.discovered")
IMPORTED = "inventory.imported"
# Text that makes a file's meaning depend on more than its bytes: vault text, and anything that could be an
# inventory plugin's `plugin:` key however YAML spells it (quoted, JSON, `? plugin`, an escape sequence in a
# double-quoted key). Deliberately wide: a file it catches is only parsed, as without a fingerprint.
DYNAMIC_RE = re.compile(rb"plugin|\$ANSIBLE_VAULT|\\")
# Variable files and the Ansible configuration are never plugin configs: only vault text makes them dynamic.
VAULT_RE = re.compile(rb"\$ANSIBLE_VAULT")
VARS_DIRS = ("group_vars", "host_vars")
MAX_FILES = 10_000


def fingerprint(sources: list[str], options: dict[str, Any]) -> str | None:
    """The sources' fingerprint, or None when one of them is not static (always parse those)."""
    from klpfleet.inventory.sources import prepare_ansible_env

    prepare_ansible_env()  # the settings the parse will run with, before ansible.constants reads them
    from ansible import constants as C
    from ansible.release import __version__ as ansible_version

    digest = hashlib.sha256()

    def add(*parts: str | bytes) -> None:
        for part in parts:
            data = part if isinstance(part, bytes) else part.encode("utf-8", "surrogateescape")
            digest.update(len(data).to_bytes(8, "big") + data)

    settings = {k: v for k, v in os.environ.items() if k.startswith("ANSIBLE_")}
    add(__version__, ansible_version, json.dumps([options, settings], sort_keys=True, default=str))
    config = getattr(C, "CONFIG_FILE", None)
    if config and not _add_files(add, [Path(config)], VAULT_RE):
        return None
    for source in sources:
        path = Path(source)
        if "," in source and not path.exists():
            return None  # a host list on the command line: cheap to parse, not worth a cache
        base = path if path.is_dir() else path.parent
        add("source", str(path.resolve()))
        trees = [path] if path.is_dir() else [base / beside for beside in VARS_DIRS]
        files = [] if path.is_dir() else [path]
        for tree in trees:
            if tree.is_symlink():
                return None  # Ansible follows it; a fingerprint of what lies behind a link is not kept
            if tree.is_dir():
                found = sorted(tree.rglob("*"))
                if any(p.is_symlink() for p in found):
                    return None
                files += [p for p in found if not p.is_dir()]
        if len(files) > MAX_FILES or not _add_files(add, files):
            return None
    return digest.hexdigest()


def _add_files(add: Any, files: list[Path], dynamic: re.Pattern[bytes] | None = None) -> bool:
    for file in files:
        pattern = dynamic or (VAULT_RE if VARS_DIRS[0] in file.parts or VARS_DIRS[1] in file.parts else DYNAMIC_RE)
        try:
            st = file.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o111:  # links, devices, scripts
                return False
            data = file.read_bytes()
        except OSError:
            return False
        if pattern.search(data):
            return False
        add("file", str(file.resolve()), data)
    return True


def unchanged_since(session: Session, print_: str) -> dict[str, Any] | None:
    """The last import's record when it had this fingerprint and no host changed since; else None."""
    last = session.scalars(select(Event).where(Event.kind == IMPORTED).order_by(Event.id.desc()).limit(1)).first()
    if last is None or last.details.get("fingerprint") != print_:
        return None
    later = session.scalar(select(func.count(Event.id)).where(Event.kind.in_(HOST_EVENTS), Event.id > last.id))
    return None if later else {"at": last.at, **last.details}
