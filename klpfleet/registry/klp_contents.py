"""What a livepatch module patches, read from the .ko itself with pyelftools: objects, functions (with sympos),
callbacks, system states and the replace flag, in every layout livepatch modules are built in.

- `klp_patch`: a plain C livepatch module (the kernel's samples and selftests, hand-written patches). The
  `struct klp_patch` is the data whose first word is relocated to `__this_module` and whose second points at the
  `klp_object` array; the arrays' strides are not fixed (they embed a kobject, whose size follows the kernel's
  config), so each array's stride is found from its symbol's size and its relocations.
- `kpatch-build`: `.kpatch.funcs` (one `struct kpatch_patch_func` per function: new_addr, new_size, old_addr,
  old_size, sympos, name, objname; `sh_entsize` is its size), names in `.kpatch.strings`, callbacks in
  `.kpatch.callbacks.<name>` ({callback, objname}). Its klp_patch is built at init, so `replace` is not in the
  file (kpatch-build's default is replace; `--non-replace` compiles it out).
- `klp-build` (the kernel's own tool, 6.19+): `.init.klp_objects` (or `__klp_objects` in its first version) of
  `struct klp_object_ext` {name, funcs, callbacks, nr_funcs} and `.init.klp_funcs` of `struct klp_func_ext`
  {old_name, new_func, sympos}; `replace` is likewise decided at build time.
- `klpfleet-sim`: the simulator's modules carry their spec (JSON) in a section of their own.

Every read is bounded by the file: a pointer that leads outside its section, a string without its NUL, an
array that does not fit is a ModuleFileError, never an exception from deep inside.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from klpfleet.names import FUNCTION_NAME_RE as FUNC_NAME_RE
from klpfleet.names import OBJECT_NAME_RE
from klpfleet.registry.modinfo import ModuleFileError

SIM_SPEC_SECTION = ".klpfleet.spec"
KPATCH_FUNCS = ".kpatch.funcs"
KPATCH_STRINGS = ".kpatch.strings"
KPATCH_CALLBACK_PREFIX = ".kpatch.callbacks."
KLP_BUILD_OBJECTS = (".init.klp_objects", "__klp_objects")
KLP_BUILD_FUNCS = (".init.klp_funcs", "__klp_funcs")
CALLBACKS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")
# Relocation types that store a symbol's absolute 64-bit address (the only kind static pointers use).
ABS64 = {"EM_X86_64": 1, "EM_AARCH64": 257, "EM_PPC64": 38, "EM_S390": 22, "EM_RISCV": 2, "EM_LOONGARCH": 2}
MAX_FUNCTIONS = 10_000
MAX_STATES = 64
KLP_STATE_SIZE = 24  # struct klp_state {unsigned long id; unsigned int version; void *data;}
KLP_OBJECT_EXT_SIZE = 64  # name, funcs, struct klp_callbacks (4 pointers + bool), nr_funcs
KLP_FUNC_EXT_SIZE = 24
KPATCH_FUNC_SIZE = 56


@dataclass
class PatchContents:
    format: str
    # object (vmlinux or a module) -> [(function, sympos)]; the kernel names the sysfs directory `func,sympos`,
    # with sympos 0 shown as 1.
    objects: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    callbacks: dict[str, list[str]] = field(default_factory=dict)
    replace: bool | None = None
    replace_source: str = "module data"
    states: list[dict[str, int]] = field(default_factory=list)
    # A simulated module says in its spec whether it is signed (it carries no PKCS#7 signature).
    simulated_signed: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "objects": {
                obj: [{"function": f, "sympos": pos} for f, pos in funcs] for obj, funcs in self.objects.items()
            },
            "callbacks": self.callbacks,
            "replace": self.replace,
            "replace_source": self.replace_source,
            "states": self.states,
        }


class _Elf:
    """Sections' bytes and each section's absolute relocations, {offset: (target section index, offset)}."""

    def __init__(self, data: bytes, label: str) -> None:
        self.label = label
        self.elf = ELFFile(io.BytesIO(data))
        self.little = self.elf.little_endian
        self.by_name: dict[str, int] = {}
        self.data: dict[int, bytes] = {}
        for index, section in enumerate(self.elf.iter_sections()):
            self.by_name.setdefault(section.name, index)
        self.symbols: list[Any] = []
        symtab = self.elf.get_section_by_name(".symtab")
        if isinstance(symtab, SymbolTableSection):
            self.symbols = list(symtab.iter_symbols())
        self._relocs: dict[int, dict[int, tuple[int, int] | str]] | None = None
        self.abs64 = ABS64.get(self.elf.header["e_machine"])

    def fail(self, message: str) -> ModuleFileError:
        return ModuleFileError(f"{self.label}: {message}")

    def bytes_of(self, index: int) -> bytes:
        if index not in self.data:
            section = self.elf.get_section(index)
            self.data[index] = b"" if section["sh_type"] == "SHT_NOBITS" else section.data()
        return self.data[index]

    def size_of(self, index: int) -> int:
        return int(self.elf.get_section(index)["sh_size"])

    def relocs(self, index: int) -> dict[int, tuple[int, int] | str]:
        """Relocations applied to section `index`: offset -> (section, offset) of a defined target, or the
        name of an undefined symbol (`__this_module` in a .o, an exported function)."""
        if self._relocs is None:
            self._relocs = {}
            for section in self.elf.iter_sections():
                if not isinstance(section, RelocationSection) or not section.is_RELA():
                    continue
                applies_to = section["sh_info"]
                table: dict[int, tuple[int, int] | str] = self._relocs.setdefault(applies_to, {})
                for rel in section.iter_relocations():
                    if rel["r_info_type"] != self.abs64:
                        continue
                    sym_index = rel["r_info_sym"]
                    if not 0 <= sym_index < len(self.symbols):
                        raise self.fail("a relocation names a symbol the module does not have")
                    sym = self.symbols[sym_index]
                    shndx = sym["st_shndx"]
                    if isinstance(shndx, int) and shndx > 0:
                        table[rel["r_offset"]] = (shndx, sym["st_value"] + rel["r_addend"])
                    else:
                        table[rel["r_offset"]] = sym.name
        return self._relocs.get(index, {})

    def word(self, index: int, offset: int, size: int = 8) -> int:
        data = self.bytes_of(index)
        if not 0 <= offset <= len(data) - size:
            raise self.fail("livepatch data points outside its section")
        fmt = {8: "Q", 4: "I", 1: "B"}[size]
        return int(struct.unpack_from(("<" if self.little else ">") + fmt, data, offset)[0])

    def string(self, target: tuple[int, int] | str) -> str:
        if isinstance(target, str):
            raise self.fail(f"a name points at undefined symbol {target!r}")
        index, offset = target
        data = self.bytes_of(index)
        end = data.find(b"\0", offset, offset + 256) if 0 <= offset < len(data) else -1
        if end < 0:
            raise self.fail("a name in the livepatch data is not a NUL-terminated string of its section")
        return data[offset:end].decode("ascii", "replace")

    def symbol_size_at(self, index: int, offset: int) -> int | None:
        """The size of the data object that starts at (section, offset), from the symbol table."""
        for sym in self.symbols:
            typed = sym["st_info"]["type"] in ("STT_OBJECT", "STT_NOTYPE")
            if typed and sym["st_shndx"] == index and sym["st_value"] == offset and sym["st_size"] > 0:
                return int(sym["st_size"])
        return None


def read_contents(data: bytes, label: str) -> PatchContents:
    """What the module patches. A module whose layout is none of the known ones reads as format `unknown`
    with nothing listed (a pre-flight then says it cannot tell), never as a guess."""
    from klpfleet.registry.modinfo import parse_modinfo

    try:
        elf = _Elf(data, label)
        params = {p.split(":", 1)[0] for p in parse_modinfo(_section(elf, ".modinfo")).get("parm", [])}
        if SIM_SPEC_SECTION in elf.by_name:
            return _sim(elf)
        if KPATCH_FUNCS in elf.by_name:
            return _kpatch(elf)
        for name in KLP_BUILD_OBJECTS:
            if name in elf.by_name:
                return _klp_build(elf, elf.by_name[name])
        return _plain(elf, params)
    except ModuleFileError:
        raise
    except Exception as exc:  # pyelftools on hostile input can raise nearly anything
        raise ModuleFileError(f"{label}: malformed livepatch data ({type(exc).__name__})") from None


def _section(elf: _Elf, name: str) -> bytes:
    return elf.bytes_of(elf.by_name[name]) if name in elf.by_name else b""


def _add(contents: PatchContents, obj: str, func: str, sympos: int, elf: _Elf) -> None:
    if not OBJECT_NAME_RE.match(obj) or not FUNC_NAME_RE.match(func):
        raise elf.fail(f"livepatch data names {obj!r}/{func!r}, not an object and a function")
    if sum(len(f) for f in contents.objects.values()) >= MAX_FUNCTIONS:
        raise elf.fail(f"patches more than {MAX_FUNCTIONS} functions")
    contents.objects.setdefault(obj, []).append((func, sympos))


def _sim(elf: _Elf) -> PatchContents:
    try:
        spec = json.loads(_section(elf, SIM_SPEC_SECTION))
    except ValueError:
        raise elf.fail("the simulated module's spec is not JSON") from None
    if not isinstance(spec, dict):
        raise elf.fail("the simulated module's spec is not a mapping")
    replace = spec.get("replace")
    contents = PatchContents(
        format="klpfleet-sim",
        replace=replace if isinstance(replace, bool) else None,
        replace_source="module data" if isinstance(replace, bool) else "a module parameter at load",
        simulated_signed=spec.get("signed") is True,
    )
    for obj in spec.get("objects") or []:
        if not isinstance(obj, dict):
            raise elf.fail("the simulated module's objects are not mappings")
        name = str(obj.get("name"))
        contents.objects.setdefault(name, [])
        for func in obj.get("funcs") or []:
            _add(contents, name, str(func), 0, elf)
        named = [cb for cb in CALLBACKS if cb in (obj.get("callbacks") or {})]
        if named:
            contents.callbacks[name] = named
    contents.states = _checked_states(
        [{"id": s.get("id"), "version": s.get("version")} for s in spec.get("states") or [] if isinstance(s, dict)],
        elf,
    )
    return contents


def _checked_states(states: list[dict[str, Any]], elf: _Elf) -> list[dict[str, int]]:
    out = []
    for state in states[: MAX_STATES + 1]:
        sid, version = state.get("id"), state.get("version")
        if not isinstance(sid, int) or not isinstance(version, int) or isinstance(sid, bool):
            raise elf.fail("a system state is not {id, version} integers")
        out.append({"id": sid, "version": version})
    if len(out) > MAX_STATES:
        raise elf.fail(f"declares more than {MAX_STATES} system states")
    return out


def _kpatch(elf: _Elf) -> PatchContents:
    index = elf.by_name[KPATCH_FUNCS]
    section = elf.elf.get_section(index)
    entry = int(section["sh_entsize"]) or KPATCH_FUNC_SIZE
    size = elf.size_of(index)
    if entry < 48 or size % entry:
        raise elf.fail(f"{KPATCH_FUNCS} is not an array of kpatch_patch_func ({size} bytes, entries of {entry})")
    relocs = elf.relocs(index)
    contents = PatchContents(format="kpatch-build", replace=None, replace_source="build option (kpatch-build)")
    for start in range(0, size, entry):
        strings = sorted(
            (off, target)
            for off, target in relocs.items()
            if start <= off < start + entry and isinstance(target, tuple) and _is_strings(elf, target[0])
        )
        if len(strings) != 2:
            raise elf.fail(f"{KPATCH_FUNCS} entry at {start} lacks its name and object name")
        (name_off, name), (_, objname) = strings
        # sympos is the field just before the name from kpatch 0.6 on (48-byte entries before it had none).
        sympos = elf.word(index, name_off - 8) if entry >= KPATCH_FUNC_SIZE else 0
        _add(contents, elf.string(objname), elf.string(name), sympos, elf)
    for cb in CALLBACKS:
        section_name = KPATCH_CALLBACK_PREFIX + cb
        if section_name not in elf.by_name:
            continue
        cb_index = elf.by_name[section_name]
        for off, target in sorted(elf.relocs(cb_index).items()):
            if off % 16 == 8 and isinstance(target, tuple):  # {callback, objname}
                contents.callbacks.setdefault(elf.string(target), []).append(cb)
    return contents


def _is_strings(elf: _Elf, index: int) -> bool:
    return elf.by_name.get(KPATCH_STRINGS) == index


def _object(elf: _Elf, contents: PatchContents, relocs: dict[int, Any], at: int) -> str:
    """An object entry (klp_object or klp_object_ext; both start {name, funcs, callbacks}): its name (no name is
    vmlinux) and which of its four callbacks are set."""
    name_at = relocs.get(at)
    obj = elf.string(name_at) if name_at is not None else "vmlinux"
    contents.objects.setdefault(obj, [])
    named = [cb for i, cb in enumerate(CALLBACKS) if at + 16 + 8 * i in relocs]
    if named:
        contents.callbacks[obj] = named
    return obj


def _klp_build(elf: _Elf, index: int) -> PatchContents:
    size = elf.size_of(index)
    if size % KLP_OBJECT_EXT_SIZE:
        raise elf.fail("klp-build's object table is not an array of klp_object_ext")
    relocs = elf.relocs(index)
    contents = PatchContents(format="klp-build", replace=None, replace_source="build option (klp-build)")
    for start in range(0, size, KLP_OBJECT_EXT_SIZE):
        obj = _object(elf, contents, relocs, start)
        funcs = relocs.get(start + 8)
        count = elf.word(index, start + 56, 4)
        if funcs is None or isinstance(funcs, str):
            if count:
                raise elf.fail("a klp_object_ext counts functions it does not point at")
            continue
        _functions(elf, contents, obj, funcs, KLP_FUNC_EXT_SIZE, count)
    return contents


def _functions(
    elf: _Elf, contents: PatchContents, obj: str, where: tuple[int, int], stride: int, count: int | None
) -> None:
    """An array of klp_func (or klp_func_ext): old_name at 0, new_func at 8, sympos at 16; `count` entries, or
    up to the first entry without a name (the kernel's terminator)."""
    index, start = where
    relocs = elf.relocs(index)
    i = 0
    while count is None or i < count:
        at = start + i * stride
        name = relocs.get(at)
        if name is None:
            if count is None:
                return
            raise elf.fail(f"function {i} of object {obj!r} has no name")
        _add(contents, obj, elf.string(name), elf.word(index, at + 16), elf)
        i += 1


def _plain(elf: _Elf, params: set[str]) -> PatchContents:
    """A C module's static `struct klp_patch`: mod (-> __this_module), objs, states, replace."""
    this_module = elf.by_name.get(".gnu.linkonce.this_module")
    for index, table in ((i, elf.relocs(i)) for i in range(elf.elf.num_sections())):
        name = elf.elf.get_section(index).name
        if name in ("__param", ".gnu.linkonce.this_module") or name.startswith((".debug", ".rela")):
            continue
        for offset, target in sorted(table.items()):
            to_module = target == "__this_module" or (isinstance(target, tuple) and target[0] == this_module)
            objs = table.get(offset + 8)
            if not to_module or not isinstance(objs, tuple):
                continue
            contents = _plain_patch(elf, index, offset, objs, params)
            if contents is not None:
                return contents
    return PatchContents(format="unknown", replace=None, replace_source="unknown")


def _plain_patch(elf: _Elf, index: int, offset: int, objs: tuple[int, int], params: set[str]) -> PatchContents | None:
    stride = _stride(elf, objs, required=8, fields=(0, 8, 16, 24, 32, 40))
    if stride is None:
        return None
    replace_value = bool(elf.word(index, offset + 24, 1))
    # A module may set `replace` from a parameter at init (the kernel's test_klp_atomic_replace does).
    decided_at_load = "replace" in params
    contents = PatchContents(
        format="klp_patch",
        replace=None if decided_at_load else replace_value,
        replace_source="a module parameter at load" if decided_at_load else "module data",
    )
    obj_index, obj_start = objs
    relocs = elf.relocs(obj_index)
    at = obj_start
    while (at + 8) in relocs:
        obj = _object(elf, contents, relocs, at)
        funcs = relocs[at + 8]
        if isinstance(funcs, str):
            raise elf.fail(f"object {obj!r} points at undefined functions {funcs!r}")
        at += stride
        if not _has_reloc(elf, funcs):
            continue  # a zeroed array: no function (the kernel's state modules patch none)
        func_stride = _stride(elf, funcs, required=0, fields=(0, 8))
        if func_stride is None:
            raise elf.fail(f"cannot size the functions of object {obj!r}")
        _functions(elf, contents, obj, funcs, func_stride, None)
    states = elf.relocs(index).get(offset + 16)
    if isinstance(states, tuple):
        contents.states = _klp_states(elf, states)
    return contents


def _has_reloc(elf: _Elf, where: tuple[int, int]) -> bool:
    return where[1] in elf.relocs(where[0])


def _stride(elf: _Elf, where: tuple[int, int], *, required: int, fields: tuple[int, ...]) -> int | None:
    """The element size of a zero-terminated array of structs at `where`: the array's symbol gives its whole
    size; the stride is the one for which every element but the last has its `required` pointer relocated, no
    relocation falls outside the pointer fields, and the last (the terminator) has none."""
    index, start = where
    total = elf.symbol_size_at(index, start)
    if total is None:
        return None
    relocs = sorted(off - start for off in elf.relocs(index) if start <= off < start + total)
    if not relocs:
        return None
    for count in range(1, min(total // 8, 4096) + 1):
        if total % (count + 1):
            continue
        stride = total // (count + 1)
        if stride < max(fields) + 8:
            break
        fits = all(r // stride < count and r % stride in fields for r in relocs)
        if fits and all(i * stride + required in relocs for i in range(count)):
            return stride
    return None


def _klp_states(elf: _Elf, where: tuple[int, int]) -> list[dict[str, int]]:
    index, start = where
    states: list[dict[str, int]] = []
    for i in range(MAX_STATES + 1):
        at = start + i * KLP_STATE_SIZE
        if at + KLP_STATE_SIZE > len(elf.bytes_of(index)):
            break
        sid = elf.word(index, at)
        if sid == 0:
            return states
        states.append({"id": sid, "version": elf.word(index, at + 8, 4)})
    raise elf.fail("the system states are not terminated within the module")


def stored_contents(value: Any) -> dict[str, Any] | None:
    """A patch's contents as kept in the database, believed only in the shape `as_dict` writes (a forged or
    damaged row reads as not known, never as a crash or a wrong verdict)."""
    if not isinstance(value, dict):
        return None
    objects, states, callbacks = value.get("objects"), value.get("states"), value.get("callbacks", {})
    if not isinstance(objects, dict) or not isinstance(states, list) or not isinstance(callbacks, dict):
        return None
    for obj, funcs in objects.items():
        if not (isinstance(obj, str) and OBJECT_NAME_RE.match(obj) and isinstance(funcs, list)):
            return None
        for f in funcs:
            if not (isinstance(f, dict) and isinstance(f.get("function"), str) and FUNC_NAME_RE.match(f["function"])):
                return None
            if not isinstance(f.get("sympos"), int) or isinstance(f.get("sympos"), bool) or f["sympos"] < 0:
                return None
    for state in states:
        if not isinstance(state, dict) or not all(
            isinstance(state.get(k), int) and not isinstance(state.get(k), bool) for k in ("id", "version")
        ):
            return None
    if value.get("replace") not in (True, False, None):
        return None
    return value
