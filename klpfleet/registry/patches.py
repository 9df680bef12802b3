"""Registering, listing and finding patch artifacts."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from klpfleet.db import events, locks
from klpfleet.db.engine import default_data_dir
from klpfleet.db.models import Patch
from klpfleet.db.types import MAX_ROW_ID
from klpfleet.errors import UsageError

CVE_PREFIX = "CVE-"


def artifact_store() -> Path:
    """Content-addressed copies of every registered .ko, so a file edited or deleted later changes nothing."""
    return Path(os.environ.get("KLPFLEET_ARTIFACTS") or default_data_dir() / "artifacts")


def _sha256_of(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def store_artifact(data: bytes, sha256: str, name: str) -> Path:
    """Keep these bytes (already hashed to `sha256`) as the read-only copy rollouts ship. A copy already
    there is verified, and replaced when its content does not match its name (a poisoned or damaged store
    heals on the next `patch add` of the genuine file)."""
    dest_dir = artifact_store() / sha256
    dest = dest_dir / f"{name}.ko"
    if _sha256_of(dest) == sha256:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o444)
        if _sha256_of(Path(tmp)) != sha256:
            raise UsageError(f"{dest}: the stored copy does not match sha256 {sha256} (disk or store problem)")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def validate_cves(cves: list[str]) -> list[str]:
    out = []
    for cve in cves:
        cve = cve.strip().upper()
        if not cve.isascii():
            raise UsageError(f"{cve!r} is not a CVE id (CVE-YYYY-NNNN, in ASCII)")
        parts = cve.split("-")
        if len(parts) != 3 or parts[0] != "CVE" or not parts[1].isdigit() or not parts[2].isdigit():
            raise UsageError(f"{cve!r} is not a CVE id (CVE-YYYY-NNNN)")
        out.append(cve)
    return out


def add_patch(
    session: Session, path: str | Path, *, description: str | None = None, cves: list[str] | None = None
) -> tuple[Patch, bool]:
    """Register a livepatch .ko. Returns (patch, created); the same content twice is a no-op."""
    from klpfleet.registry.modinfo import read_livepatch  # pyelftools only when a file is read

    src = Path(path)
    cve_list = validate_cves(cves or [])
    info, data = read_livepatch(src)
    contents, signature = read_what_it_patches(data, str(src))
    stored = store_artifact(data, info.sha256, info.name)
    locks.serialize(session, locks.PATCHES)  # the same content added twice at once is still one patch
    existing = session.scalar(select(Patch).where(Patch.sha256 == info.sha256))
    if existing is not None:
        if existing.path != str(stored):
            existing.path = str(stored)
        return existing, False
    patch = Patch(
        name=info.name,
        sha256=info.sha256,
        srcversion=info.srcversion,
        vermagic=info.vermagic,
        kernel_release=info.kernel_release,
        depends=info.depends,
        size=info.size,
        description=description,
        cves=cve_list,
        path=str(stored),
        source_path=str(src.resolve()),
        contents=contents,
        signed=signature is not None,
        signature=signature,
    )
    session.add(patch)
    session.flush()
    events.add(session, "patch.added", patch=patch, sha256=info.sha256, kernel_release=info.kernel_release)
    return patch, True


def read_what_it_patches(data: bytes, label: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(objects, functions, callbacks, states and replace; the signature or None) of a module's bytes."""
    from klpfleet.registry.klp_contents import read_contents
    from klpfleet.registry.module_signature import read_signature

    contents = read_contents(data, label)
    signature = read_signature(data, label)
    if signature is None and contents.simulated_signed:
        signature = {"signer": "simulated", "key_id": None, "key_id_type": "simulated", "hash_algo": None}
    return contents.as_dict(), signature


def ensure_contents(session: Session, patch: Patch) -> dict[str, Any] | None:
    """The patch's contents, read from its stored copy once for a patch registered before klpfleet read them
    (None when that copy is gone or no longer matches its checksum: nothing is guessed)."""
    if patch.contents is not None:
        return patch.contents
    from klpfleet.registry.modinfo import ModuleFileError, read_module_bytes

    try:
        data = read_module_bytes(patch.path)
        if hashlib.sha256(data).hexdigest() != patch.sha256:
            return None
        contents, signature = read_what_it_patches(data, patch.path)
    except ModuleFileError:
        return None
    patch.contents, patch.signed, patch.signature = contents, signature is not None, signature
    return contents


def change_cves(session: Session, patch: Patch, *, add: Sequence[str] = (), remove: Sequence[str] = ()) -> list[str]:
    """Add and remove the CVEs a patch fixes (validated); the ones that changed, each an event."""
    have = list(patch.cves or [])
    added = [c for c in dict.fromkeys(validate_cves(list(add))) if c not in have]
    removed = [c for c in dict.fromkeys(validate_cves(list(remove))) if c in have]
    if added or removed:
        patch.cves = sorted((set(have) | set(added)) - set(removed))
        for cve in added:
            events.add(session, "patch.cve_added", patch=patch, cve=cve)
        for cve in removed:
            events.add(session, "patch.cve_removed", patch=patch, cve=cve)
    return added + removed


def find_patches(session: Session, ref: str) -> list[Patch]:
    """A patch by name, `name@sha-prefix`, sha256 prefix (>= 8 hex) or `#id`."""
    query = select(Patch).order_by(Patch.added_at, Patch.id)
    if ref.startswith("#") and ref[1:].isascii() and ref[1:].isdigit():
        wanted = int(ref[1:])
        return list(session.scalars(query.where(Patch.id == wanted))) if 0 < wanted <= MAX_ROW_ID else []
    name, _, sha = ref.partition("@")
    if sha:
        return list(session.scalars(query.where(Patch.name == name, Patch.sha256.startswith(sha.lower()))))
    found = list(session.scalars(query.where(Patch.name == ref)))
    if not found and len(ref) >= 8 and all(c in "0123456789abcdef" for c in ref.lower()):
        found = list(session.scalars(query.where(Patch.sha256.startswith(ref.lower()))))
    return found


def get_patch(session: Session, ref: str) -> Patch:
    """Exactly one patch, or a UsageError that lists the candidates."""
    found = find_patches(session, ref)
    if not found:
        raise UsageError(f"no patch {ref!r} (see `klpfleet patch list`)")
    if len(found) > 1:
        options = ", ".join(f"{p.name}@{p.sha256[:12]}" for p in found)
        raise UsageError(f"{ref!r} matches {len(found)} patches; name one: {options}")
    return found[0]
