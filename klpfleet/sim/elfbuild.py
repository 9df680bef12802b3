"""Writing a minimal but real ELF64 relocatable kernel-module file.

pyelftools reads ELF but cannot write it, so this small writer is ours. The file has what the module
loader and klpfleet's registry look for: `.modinfo` (NUL-separated key=value), `.gnu.linkonce.this_module`,
plus any extra sections (the simulator keeps a module's spec in `.klpfleet.spec`).
"""

from __future__ import annotations

import struct

ET_REL = 1
EM_X86_64 = 62
SHT_PROGBITS = 1
SHT_STRTAB = 3
SHF_ALLOC = 0x2
THIS_MODULE_SIZE = 0x3C0  # sizeof(struct module) on x86_64 6.1, zero-filled


def modinfo_bytes(fields: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in fields)


def build_module(modinfo: list[tuple[str, str]], extra_sections: dict[str, bytes] | None = None) -> bytes:
    sections: list[tuple[str, int, int, bytes, int]] = [
        (".modinfo", SHT_PROGBITS, SHF_ALLOC, modinfo_bytes(modinfo), 1),
        (".gnu.linkonce.this_module", SHT_PROGBITS, SHF_ALLOC, b"\0" * THIS_MODULE_SIZE, 64),
    ]
    for name, data in (extra_sections or {}).items():
        sections.append((name, SHT_PROGBITS, 0, data, 1))

    shstrtab = bytearray(b"\0")
    name_offsets = []
    for name, *_ in [*sections, (".shstrtab", 0, 0, b"", 1)]:
        name_offsets.append(len(shstrtab))
        shstrtab += name.encode() + b"\0"
    sections.append((".shstrtab", SHT_STRTAB, 0, bytes(shstrtab), 1))

    body = bytearray()
    offsets = []
    cursor = 64  # after the ELF header
    for _, _, _, data, align in sections:
        pad = (-cursor) % align
        body += b"\0" * pad
        cursor += pad
        offsets.append(cursor)
        body += data
        cursor += len(data)
    pad = (-cursor) % 8
    body += b"\0" * pad
    shoff = cursor + pad

    shnum = len(sections) + 1
    header = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH",
        b"\x7fELF",
        2,
        1,
        1,
        0,
        0,
        b"\0" * 7,  # ELF64, little-endian, version 1, SysV ABI
        ET_REL,
        EM_X86_64,
        1,
        0,
        0,
        shoff,
        0,
        64,
        0,
        0,
        64,
        shnum,
        shnum - 1,
    )
    shdrs = bytearray(b"\0" * 64)  # SHN_UNDEF
    for (_name, sh_type, flags, data, align), name_off, offset in zip(sections, name_offsets, offsets, strict=True):
        shdrs += struct.pack("<IIQQQQIIQQ", name_off, sh_type, flags, 0, offset, len(data), 0, 0, align, 0)
    return bytes(header) + bytes(body) + bytes(shdrs)
