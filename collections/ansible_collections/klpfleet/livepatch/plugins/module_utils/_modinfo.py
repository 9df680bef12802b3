# -*- coding: utf-8 -*-
# Copyright: klpfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE: internal to the klpfleet.livepatch collection, not a public API.
"""Reading a kernel module's .modinfo on the target host, with the standard library only.

The controller reads modules with pyelftools; target hosts cannot be assumed to have it, so this is a
deliberately small ELF64/ELF32 section-table reader that refuses anything it does not understand.
"""

from __future__ import annotations

import binascii
import struct

MAX_MODULE_BYTES = 64 * 1024 * 1024


class ModinfoError(ValueError):
    pass


def read_sections(data):
    """Return {section name: bytes} for a little- or big-endian ELF32/ELF64 relocatable file."""
    if data[:4] != b"\x7fELF":
        raise ModinfoError("not an ELF file")
    if len(data) < 52:
        raise ModinfoError("truncated ELF header")
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    if is64:
        if len(data) < 64:
            raise ModinfoError("truncated ELF header")
        (e_type,) = struct.unpack_from(endian + "H", data, 16)
        (e_shoff,) = struct.unpack_from(endian + "Q", data, 0x28)
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(endian + "HHH", data, 0x3A)
        fmt = endian + "IIQQQQIIQQ"
    else:
        (e_type,) = struct.unpack_from(endian + "H", data, 16)
        (e_shoff,) = struct.unpack_from(endian + "I", data, 0x20)
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(endian + "HHH", data, 0x2E)
        fmt = endian + "IIIIIIIIII"
    if e_type != 1:
        raise ModinfoError("not a relocatable object (not a kernel module)")
    if e_shentsize < struct.calcsize(fmt) or e_shoff + e_shnum * e_shentsize > len(data) or e_shstrndx >= e_shnum:
        raise ModinfoError("truncated or malformed section table")
    headers = []
    for i in range(e_shnum):
        fields = struct.unpack_from(fmt, data, e_shoff + i * e_shentsize)
        name_off, sh_type, offset, size = fields[0], fields[1], fields[4], fields[5]
        if sh_type != 8 and offset + size > len(data):  # SHT_NOBITS has no bytes in the file
            raise ModinfoError("section past the end of the file")
        headers.append((name_off, sh_type, offset, size))
    strtab = headers[e_shstrndx]
    names = data[strtab[2] : strtab[2] + strtab[3]]
    sections = {}
    for name_off, sh_type, offset, size in headers:
        end = names.find(b"\0", name_off)
        name = names[name_off : end if end >= 0 else len(names)].decode("utf-8", "replace")
        sections[name] = b"" if sh_type == 8 else data[offset : offset + size]
    return sections


def parse_modinfo(raw):
    fields = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep:
            fields.setdefault(key.decode("utf-8", "replace"), []).append(value.decode("utf-8", "replace"))
    return fields


def read_module_file(path):
    """(modinfo fields, sections) of the module at path; raises ModinfoError or OSError."""
    with open(path, "rb") as f:
        return read_module_bytes(f.read(MAX_MODULE_BYTES + 1))


def read_module_bytes(data):
    """(modinfo fields, sections) of a module's bytes; raises ModinfoError."""
    if len(data) > MAX_MODULE_BYTES:
        raise ModinfoError("file is larger than any kernel module")
    sections = read_sections(data)
    if ".modinfo" not in sections or ".gnu.linkonce.this_module" not in sections:
        raise ModinfoError("not a kernel module (no .modinfo section)")
    return parse_modinfo(sections[".modinfo"]), sections


def first(fields, key, default=None):
    values = fields.get(key)
    return values[0] if values else default


BUILD_ID_SECTION = ".note.gnu.build-id"
NT_GNU_BUILD_ID = 3


def build_id_from_note(raw):
    """The hex GNU build ID in an ELF note (a .ko's section, or /sys/module/<m>/notes/.note.gnu.build-id),
    or None. The note is namesz, descsz, type (native-endian words), the name "GNU\\0" padded to 4, the ID."""
    if not raw or len(raw) < 16:
        return None
    namesz, descsz, kind = struct.unpack_from("<III", raw, 0)
    start = 12 + ((namesz + 3) & ~3)
    if kind != NT_GNU_BUILD_ID or raw[12 : 12 + namesz].rstrip(b"\0") != b"GNU" or len(raw) < start + descsz:
        return None
    return binascii.hexlify(raw[start : start + descsz]).decode("ascii") or None


def build_id_note(build_id_hex):
    """The ELF note for a build ID, as ld --build-id writes it into a .ko and the kernel shows it in
    /sys/module/<m>/notes (the simulator writes and serves it)."""
    desc = binascii.unhexlify(build_id_hex)
    return struct.pack("<III", 4, len(desc), NT_GNU_BUILD_ID) + b"GNU\0" + desc
