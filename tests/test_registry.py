"""Registering livepatch artifacts: what is read from .modinfo, and every file that must be refused."""

import os
import shutil
import struct
from pathlib import Path

import pytest
from sqlalchemy import func, select

from klpfleet.db.models import Event, Patch
from klpfleet.registry.modinfo import MAX_MODULE_BYTES

from .conftest import make_ko


def counts(db):
    with db.session() as s:
        return s.scalar(select(func.count(Patch.id))), s.scalar(select(func.count(Event.id)))


def test_add_reads_modinfo_and_stores_a_copy(cli, sqlite_db, sqlite_url, ko_factory):
    ko = ko_factory("livepatch_cve_2026_1234")
    result = cli(
        "--db", sqlite_url, "patch", "add", ko, "--cve", "cve-2026-1234", "--description", "tcp fix", "-o", "json"
    )
    assert result.code == 0, result.err
    data = result.json()["data"]
    assert data["name"] == "livepatch_cve_2026_1234"
    assert data["kernel_release"] == "6.1.0-56-amd64"
    assert data["vermagic"].startswith("6.1.0-56-amd64 SMP")
    assert data["cves"] == ["CVE-2026-1234"]
    assert data["srcversion"] == "0123456789ABCDEF0123456"
    stored = Path(data["path"])
    assert stored.read_bytes() == ko.read_bytes()
    assert not os.access(stored, os.W_OK) or os.geteuid() == 0
    assert oct(stored.stat().st_mode & 0o777) == "0o444"
    # The original can vanish: the registry keeps its own copy.
    ko.unlink()
    assert stored.exists()


def test_same_file_twice_is_a_no_op(cli, sqlite_db, sqlite_url, ko_factory):
    ko = ko_factory()
    assert cli("--db", sqlite_url, "patch", "add", ko).code == 0
    before = counts(sqlite_db)
    again = cli("--db", sqlite_url, "patch", "add", ko)
    assert again.code == 0
    assert "already registered" in again.err
    assert counts(sqlite_db) == before == (1, 1)


def not_elf(tmp_path):
    p = tmp_path / "text.ko"
    p.write_text("hello, not a module\n")
    return p


def elf_executable(tmp_path):
    p = tmp_path / "ls.ko"
    shutil.copy("/bin/ls", p)  # a real ELF, but ET_DYN, not a relocatable module
    return p


def elf_not_module(tmp_path):
    from klpfleet.sim.elfbuild import build_module

    data = bytearray(build_module([("name", "x"), ("vermagic", "6.1.0 SMP")]))
    # rename .gnu.linkonce.this_module so it is an ET_REL object file but no module
    idx = data.find(b".gnu.linkonce.this_module")
    data[idx : idx + 5] = b".XXXX"
    p = tmp_path / "obj.ko"
    p.write_bytes(bytes(data))
    return p


def plain_module(tmp_path):
    return make_ko(tmp_path / "plain.ko", "virtio_net", livepatch=False)


def truncated(tmp_path):
    full = make_ko(tmp_path / "full.ko").read_bytes()
    p = tmp_path / "trunc.ko"
    p.write_bytes(full[: len(full) // 2])
    return p


def lying_section(tmp_path):
    data = bytearray(make_ko(tmp_path / "full.ko").read_bytes())
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    # section 1 (.modinfo): claim a size far past the end of the file
    struct.pack_into("<Q", data, shoff + 64 + 32, 1 << 40)
    p = tmp_path / "lying.ko"
    p.write_bytes(bytes(data))
    return p


def oversized(tmp_path):
    p = tmp_path / "huge.ko"
    with open(p, "wb") as f:
        f.write(b"\x7fELF")
        f.truncate(MAX_MODULE_BYTES + 1)
    return p


def missing(tmp_path):
    return tmp_path / "nope.ko"


def directory(tmp_path):
    d = tmp_path / "dir.ko"
    d.mkdir()
    return d


def no_vermagic(tmp_path):
    from klpfleet.sim.elfbuild import build_module

    p = tmp_path / "novm.ko"
    p.write_bytes(build_module([("name", "lp"), ("livepatch", "Y")]))
    return p


@pytest.mark.parametrize(
    ("maker", "message"),
    [
        (not_elf, "not an ELF file"),
        (elf_executable, "not a kernel module"),
        (elf_not_module, "not a kernel module"),
        (plain_module, "is not a livepatch"),
        (truncated, "truncated"),
        (lying_section, "truncated"),
        (oversized, "larger than any livepatch module"),
        (missing, "cannot read"),
        (directory, "is a directory"),
        (no_vermagic, "no vermagic"),
    ],
)
def test_bad_files_are_refused_with_one_line_and_nothing_written(cli, sqlite_db, sqlite_url, tmp_path, maker, message):
    cli("--db", sqlite_url, "patch", "add", make_ko(tmp_path / "good.ko"))
    before = counts(sqlite_db)
    store_before = sorted(p.name for p in (tmp_path / "artifacts").rglob("*"))
    result = cli("--db", sqlite_url, "patch", "add", maker(tmp_path))
    assert result.code != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert message in lines[0]
    assert "Traceback" not in result.err
    assert counts(sqlite_db) == before
    assert sorted(p.name for p in (tmp_path / "artifacts").rglob("*")) == store_before


def test_bad_cve_is_refused(cli, sqlite_db, sqlite_url, ko_factory):
    result = cli("--db", sqlite_url, "patch", "add", ko_factory(), "--cve", "2026-1")
    assert result.code == 2
    assert "not a CVE id" in result.err
    assert counts(sqlite_db) == (0, 0)


def test_list_and_show_resolve_names_and_ambiguity(cli, sqlite_db, sqlite_url, ko_factory):
    a = ko_factory("lp_fix", srcversion="A" * 23)
    b = ko_factory("lp_fix", srcversion="B" * 23, vermagic="6.1.0-99-amd64 SMP preempt mod_unload ")
    for ko in (a, b):
        assert cli("--db", sqlite_url, "patch", "add", ko).code == 0
    listed = cli("--db", sqlite_url, "patch", "list", "-o", "json").json()["data"]
    assert sorted(p["kernel_release"] for p in listed) == ["6.1.0-56-amd64", "6.1.0-99-amd64"]
    both = cli("--db", sqlite_url, "patch", "show", "lp_fix", "-o", "json").json()["data"]
    assert len(both) == 2
    sha = both[1]["sha256"]
    one = cli("--db", sqlite_url, "patch", "show", f"lp_fix@{sha[:10]}", "-o", "json").json()["data"]
    assert [p["sha256"] for p in one] == [sha]
    assert cli("--db", sqlite_url, "patch", "show", sha[:12], "-o", "json").json()["data"][0]["sha256"] == sha
    unknown = cli("--db", sqlite_url, "patch", "show", "nope")
    assert unknown.code == 2
    assert "no patch 'nope'" in unknown.err


def test_registry_on_postgres(cli, pg_url, ko_factory):
    assert cli("--db", pg_url, "db", "upgrade").code == 0
    ko = ko_factory()
    assert cli("--db", pg_url, "patch", "add", ko).code == 0
    assert cli("--db", pg_url, "patch", "add", ko).code == 0
    assert len(cli("--db", pg_url, "patch", "list", "-o", "json").json()["data"]) == 1
