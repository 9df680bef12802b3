"""The livepatch ELF reader on modules gcc builds in each layout livepatch modules come in, and on signatures made
the way the kernel's sign-file makes them. (The lab reads the real kernel-built modules on every lab kernel.)"""

import struct
import subprocess

import pytest

from klpfleet.registry.klp_contents import read_contents
from klpfleet.registry.modinfo import ModuleFileError, read_livepatch
from klpfleet.registry.module_signature import MARKER, read_signature

from .signing import signed

# What every .ko has: .modinfo and the module struct (the reader refuses a file without them).
MODULE = r"""
struct module_stub { char pad[896]; };
struct module_stub __this_module __attribute__((section(".gnu.linkonce.this_module"), aligned(64)));
static const char modinfo[] __attribute__((section(".modinfo"), used)) =
    "name=NAME\0vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions \0livepatch=Y\0license=GPL";
int new_a(void) { return 1; }
int new_b(void) { return 2; }
int cb(void *o) { return 0; }
"""

# A C livepatch module: its static klp_patch / klp_object / klp_func, with a kobject-sized hole as the kernel's
# structs have (its size follows the kernel's config, so the reader must not assume one).
PLAIN = r"""
struct kobj { char pad[KOBJ]; };
struct klp_func { const char *old_name; void *new_func; unsigned long old_sympos; void *old_func; struct kobj k;
                  char rest[40]; };
struct klp_object { const char *name; struct klp_func *funcs; void *cbs[4]; struct kobj k; char rest[56]; };
struct klp_state { unsigned long id; unsigned int version; void *data; };
struct klp_patch { void *mod; struct klp_object *objs; struct klp_state *states; _Bool replace; char rest[120]; };
static struct klp_func vm_funcs[] = { { .old_name = "cmdline_proc_show", .new_func = new_a },
                                      { .old_name = "meminfo_proc_show", .new_func = new_b, .old_sympos = 2 }, { } };
static struct klp_func ext4_funcs[] = { { .old_name = "ext4_iget", .new_func = new_a }, { } };
static struct klp_object objs[] = { { .funcs = vm_funcs, .cbs = { cb, 0, 0, cb } },
                                    { .name = "ext4", .funcs = ext4_funcs }, { } };
static struct klp_state states[] = { { .id = 7, .version = 3 }, { } };
struct klp_patch patch = { .mod = &__this_module, .objs = objs, .states = states, .replace = 1 };
"""

# kpatch-build's layout: struct kpatch_patch_func per function in .kpatch.funcs, names in .kpatch.strings.
KPATCH = r"""
struct kpatch_patch_func { unsigned long new_addr, new_size, old_addr, old_size, sympos; const char *name, *objname; };
struct kpatch_callback { void *callback; const char *objname; };
static const char s_cmd[] __attribute__((section(".kpatch.strings"))) = "cmdline_proc_show";
static const char s_vm[] __attribute__((section(".kpatch.strings"))) = "vmlinux";
static const char s_xfs[] __attribute__((section(".kpatch.strings"))) = "xfs_fs_fill_super";
static const char s_xfs_o[] __attribute__((section(".kpatch.strings"))) = "xfs";
struct kpatch_patch_func funcs[] __attribute__((section(".kpatch.funcs"))) = {
    { (unsigned long)new_a, 16, 0, 32, 0, s_cmd, s_vm },
    { (unsigned long)new_b, 16, 0, 32, 3, s_xfs, s_xfs_o },
};
struct kpatch_callback pre[] __attribute__((section(".kpatch.callbacks.pre_patch"))) = { { cb, s_xfs_o } };
"""

# klp-build's layout (the kernel's objtool klp diff): klp_object_ext / klp_func_ext tables.
KLP_BUILD = r"""
struct klp_func_ext { const char *old_name; void *new_func; unsigned long sympos; };
struct klp_callbacks { void *cbs[4]; _Bool post_unpatch_enabled; };
struct klp_object_ext { const char *name; struct klp_func_ext *funcs; struct klp_callbacks callbacks;
                        unsigned int nr_funcs; };
struct klp_func_ext vm_funcs[] __attribute__((section(".init.klp_funcs"))) = {
    { "cmdline_proc_show", new_a, 0 }, { "do_sys_open", new_b, 2 } };
struct klp_object_ext objs[] __attribute__((section(".init.klp_objects"))) = {
    { 0, vm_funcs, { { 0, cb, 0, 0 }, 0 }, 2 } };
"""


def build(tmp_path, name, body, **defines):
    src = tmp_path / f"{name}.c"
    src.write_text(MODULE.replace("NAME", name) + body)
    obj = tmp_path / f"{name}.ko"
    flags = [f"-D{k}={v}" for k, v in defines.items()]
    subprocess.run(["gcc", "-c", "-O2", "-fno-common", *flags, str(src), "-o", str(obj)], check=True)
    return obj


@pytest.mark.parametrize("kobject_size", [64, 72, 120])  # no config, CONFIG_DEBUG_KOBJECT_RELEASE-like, other
def test_plain_c_module(tmp_path, kobject_size):
    ko = build(tmp_path, "klp_plain", PLAIN, KOBJ=kobject_size)
    info, data = read_livepatch(ko)  # the registry takes it as a livepatch module
    assert info.name == "klp_plain" and info.livepatch
    contents = read_contents(data, str(ko)).as_dict()
    assert contents["format"] == "klp_patch"
    assert contents["objects"] == {
        "vmlinux": [{"function": "cmdline_proc_show", "sympos": 0}, {"function": "meminfo_proc_show", "sympos": 2}],
        "ext4": [{"function": "ext4_iget", "sympos": 0}],
    }
    assert contents["callbacks"] == {"vmlinux": ["pre_patch", "post_unpatch"]}
    assert contents["states"] == [{"id": 7, "version": 3}]
    assert contents["replace"] is True


def test_kpatch_build_layout(tmp_path):
    ko = build(tmp_path, "kpatch_cve", KPATCH)
    contents = read_contents(ko.read_bytes(), str(ko)).as_dict()
    assert contents["format"] == "kpatch-build"
    assert contents["objects"] == {
        "vmlinux": [{"function": "cmdline_proc_show", "sympos": 0}],
        "xfs": [{"function": "xfs_fs_fill_super", "sympos": 3}],
    }
    assert contents["callbacks"] == {"xfs": ["pre_patch"]}
    assert contents["replace"] is None and "kpatch-build" in contents["replace_source"]


def test_klp_build_layout(tmp_path):
    ko = build(tmp_path, "livepatch_klp", KLP_BUILD)
    contents = read_contents(ko.read_bytes(), str(ko)).as_dict()
    assert contents["format"] == "klp-build"
    assert contents["objects"] == {
        "vmlinux": [{"function": "cmdline_proc_show", "sympos": 0}, {"function": "do_sys_open", "sympos": 2}]
    }
    assert contents["callbacks"] == {"vmlinux": ["post_patch"]}


def test_hostile_layouts_are_one_clear_error(tmp_path):
    ko = build(tmp_path, "klp_plain", PLAIN, KOBJ=64)
    data = bytearray(ko.read_bytes())
    # Point every relocation's symbol index far outside the symbol table.
    from elftools.elf.elffile import ELFFile

    with open(ko, "rb") as f:
        elf = ELFFile(f)
        for section in elf.iter_sections():
            if section["sh_type"] == "SHT_RELA":
                for i in range(section.num_relocations()):
                    at = section["sh_offset"] + i * 24 + 8
                    info = struct.unpack_from("<Q", data, at)[0]
                    struct.pack_into("<Q", data, at, (0xFFFF << 32) | (info & 0xFFFFFFFF))
    with pytest.raises(ModuleFileError, match="symbol the module does not have"):
        read_contents(bytes(data), "hostile.ko")


def sign(tmp_path, ko, subject_key_id=False):
    return signed(ko.read_bytes(), tmp_path, subject_key_id)


def test_signature_signer_and_key(tmp_path):
    ko = build(tmp_path, "klp_plain", PLAIN, KOBJ=64)
    assert read_signature(ko.read_bytes(), "x") is None
    signed = read_signature(sign(tmp_path, ko), "x")
    assert signed["signer"] == "klpfleet test signing key" and signed["key_id_type"] == "serial"
    assert signed["hash_algo"] == "sha256" and len(signed["key_id"].split(":")) >= 8
    by_skid = read_signature(sign(tmp_path, ko, subject_key_id=True), "x")
    assert by_skid["key_id_type"] == "subject_key_identifier" and by_skid["signer"] is None
    # A signed module's ELF still reads (the signature is appended after it).
    assert read_contents(sign(tmp_path, ko), "x").format == "klp_patch"
    broken = sign(tmp_path, ko)
    cut = broken[: -len(MARKER) - 12 - 40] + broken[-len(MARKER) - 12 :]
    with pytest.raises(ModuleFileError, match="signature"):
        read_signature(cut, "cut.ko")
