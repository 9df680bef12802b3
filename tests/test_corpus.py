"""The hostile and malformed input corpus (tests/corpus/cases.yml): every case gives one clear line on
stderr, its exit code and no traceback; the database is unchanged and no command ran with the text."""

import os
import shutil
from pathlib import Path

import pytest
import yaml
from sqlalchemy import inspect, text

from klpfleet.db.models import Host
from klpfleet.registry.modinfo import MAX_MODULE_BYTES

from .conftest import make_ko

CORPUS = Path(__file__).parent / "corpus"
CASES = yaml.safe_load((CORPUS / "cases.yml").read_text())


@pytest.fixture(scope="module")
def base_db(tmp_path_factory):
    """A database with one host and one patch, so "unchanged" means something."""
    from klpfleet.db.engine import open_database
    from klpfleet.db.migrate import upgrade
    from klpfleet.registry.patches import add_patch

    tmp = tmp_path_factory.mktemp("corpus-base")
    db = open_database(str(tmp / "base.db"), create=True)
    upgrade(db)
    with db.session.begin() as s:
        s.add(Host(name="web1", address="127.0.0.1", kernel_release="6.1.0-56-amd64", vars={}))
        add_patch(s, make_ko(tmp / "lp_good.ko", "lp_good"))
    db.engine.dispose()
    return tmp / "base.db"


def snapshot(db_path: Path) -> dict[str, int]:
    from klpfleet.db.engine import open_database

    db = open_database(str(db_path))
    with db.engine.connect() as conn:
        counts = {
            t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar() for t in inspect(conn).get_table_names()
        }
    db.engine.dispose()
    return counts


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_corpus_case(cli, case, base_db, tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_ARTIFACTS", str(tmp_path / "artifacts"))
    marker = tmp_path / "PWNED"
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    for path in corpus.rglob("*"):
        if path.is_file() and path.suffix in (".yml", ".ini"):
            path.write_text(path.read_text().replace("@MARKER@", str(marker)))
    oversized = tmp_path / "huge.ko"
    with open(oversized, "wb") as f:
        f.write(b"\x7fELF")
        f.truncate(MAX_MODULE_BYTES + 1)
    db = tmp_path / "k.db"
    shutil.copy(base_db, db)

    def fill(arg: str) -> str:
        return arg.format(corpus=corpus, tmp=tmp_path, oversized=oversized)

    for step in case.get("prepare", []):
        assert cli("--db", db, *map(fill, step)).code == 0
    if case.get("prepare_fifo"):  # a named pipe where a .ko is expected: opening it must not wait for a writer
        os.mkfifo(fill(case["prepare_fifo"]))
    before = snapshot(db)
    scratch_before = scratch(tmp_path)
    result = cli("--db", case.get("db", str(db)), *map(fill, case["args"]))
    assert result.code == case["code"], result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert case["error"] in lines[0], lines[0]
    assert "Traceback" not in result.err and result.out == ""
    assert snapshot(db) == before
    assert not marker.exists()
    assert scratch(tmp_path) == scratch_before  # no output file, no half-made fleet


def scratch(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("k.db-"))  # SQLite's -wal/-shm
