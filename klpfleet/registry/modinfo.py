"""Reading a kernel module's identity from its ELF `.modinfo` section, with pyelftools.

Every way a file can fail to be a livepatch module ends in a ModuleFileError whose message is one line
an operator can act on. Hostile files (truncated, lying section headers, huge) are refused before
pyelftools reads past what the file holds.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from klpfleet.errors import UsageError

MAX_MODULE_BYTES = 64 * 1024 * 1024  # livepatch modules are kilobytes to a few MiB
ELF_MAGIC = b"\x7fELF"


class ModuleFileError(UsageError):
    pass


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    vermagic: str
    srcversion: str | None
    depends: list[str]
    livepatch: bool
    sha256: str
    size: int
    fields: dict[str, list[str]] = field(default_factory=dict)
    sections: tuple[str, ...] = ()

    @property
    def kernel_release(self) -> str:
        return self.vermagic.split()[0]


def parse_modinfo(raw: bytes) -> dict[str, list[str]]:
    """`.modinfo` is NUL-separated `key=value` strings; a key may repeat (alias, parm ...)."""
    out: dict[str, list[str]] = {}
    for entry in raw.split(b"\0"):
        if not entry:
            continue
        key, sep, value = entry.partition(b"=")
        if not sep:
            continue
        out.setdefault(key.decode("utf-8", "replace"), []).append(value.decode("utf-8", "replace"))
    return out


def read_module_bytes(path: str | Path) -> bytes:
    """The file's bytes, read once through one open descriptor: whatever is checked, hashed and stored is
    exactly this content, even if the path is swapped meanwhile."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer before it is refused.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ModuleFileError(f"{path}: not a regular file")
            data = f.read(MAX_MODULE_BYTES + 1)
    except IsADirectoryError:
        raise ModuleFileError(f"{path}: not a regular file") from None
    except OSError as exc:
        raise ModuleFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_MODULE_BYTES:
        raise ModuleFileError(f"{path}: larger than any livepatch module ({MAX_MODULE_BYTES} bytes max)")
    return data


def read_module(path: str | Path) -> ModuleInfo:
    return inspect_module(read_module_bytes(path), str(path))


def inspect_module(data: bytes, label: str) -> ModuleInfo:
    if not data.startswith(ELF_MAGIC):
        raise ModuleFileError(f"{label}: not an ELF file")
    try:
        sections, modinfo_raw = _elf_sections(data, label)
    except ModuleFileError:
        raise
    except (ELFError, ValueError, KeyError, IndexError, EOFError, OverflowError, AssertionError) as exc:
        raise ModuleFileError(f"{label}: malformed or truncated ELF file ({exc})") from None
    except Exception as exc:  # pyelftools on hostile input can raise nearly anything
        raise ModuleFileError(f"{label}: malformed ELF file ({type(exc).__name__})") from None

    if ".gnu.linkonce.this_module" not in sections or modinfo_raw is None:
        raise ModuleFileError(f"{label}: ELF file is not a kernel module (no .modinfo/.gnu.linkonce.this_module)")
    fields = parse_modinfo(modinfo_raw)
    name = _single(fields, "name")
    vermagic = _single(fields, "vermagic")
    if not name:
        raise ModuleFileError(f"{label}: kernel module has no name in .modinfo")
    if not vermagic:
        raise ModuleFileError(f"{label}: kernel module has no vermagic in .modinfo")
    if not _valid_module_name(name):
        raise ModuleFileError(f"{label}: kernel module name {name!r} is not a valid module name")
    livepatch = _single(fields, "livepatch") == "Y"
    depends_raw = _single(fields, "depends") or ""
    return ModuleInfo(
        name=name,
        vermagic=vermagic,
        srcversion=_single(fields, "srcversion"),
        depends=[d for d in depends_raw.split(",") if d],
        livepatch=livepatch,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        fields=fields,
        sections=tuple(sections),
    )


def read_livepatch(path: str | Path) -> tuple[ModuleInfo, bytes]:
    """A livepatch module's identity and the very bytes it was read from."""
    data = read_module_bytes(path)
    info = inspect_module(data, str(path))
    if not info.livepatch:
        raise ModuleFileError(f"{path}: module {info.name!r} is not a livepatch (no livepatch=Y in .modinfo)")
    return info, data


def _elf_sections(data: bytes, label: str) -> tuple[list[str], bytes | None]:
    import io

    elf = ELFFile(io.BytesIO(data))
    if elf.header["e_type"] != "ET_REL":
        raise ModuleFileError(f"{label}: ELF file is not a kernel module (type {elf.header['e_type']}, not ET_REL)")
    if elf.header["e_shoff"] + elf.header["e_shnum"] * elf.header["e_shentsize"] > len(data):
        raise ModuleFileError(f"{label}: truncated ELF file (section headers past the end)")
    names: list[str] = []
    modinfo: bytes | None = None
    for section in elf.iter_sections():
        names.append(section.name)
        if section["sh_type"] != "SHT_NOBITS" and section["sh_offset"] + section["sh_size"] > len(data):
            raise ModuleFileError(f"{label}: truncated ELF file (section {section.name!r} past the end)")
        if section.name == ".modinfo":
            modinfo = section.data()
    return names, modinfo


def _single(fields: dict[str, list[str]], key: str) -> str | None:
    values = fields.get(key)
    return values[0] if values else None


def _valid_module_name(name: str) -> bool:
    # The kernel's MODULE_NAME_LEN is 56 including the NUL; names are C identifiers (dashes become _).
    return 0 < len(name) < 56 and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
