"""The schema: Alembic scripts and models agree, and migrate both ways, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from klpfleet.db.engine import SCHEMA_HEAD, current_revision, open_database
from klpfleet.db.migrate import downgrade, head_revision, upgrade
from klpfleet.db.models import Base


def test_schema_head_constant_matches_the_scripts():
    assert head_revision() == SCHEMA_HEAD


def test_upgrade_matches_models_then_downgrade_to_base(any_db_url):
    db = open_database(any_db_url, create=True)
    upgrade(db)
    assert current_revision(db) == SCHEMA_HEAD
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    downgrade(db, "base")
    with db.engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    assert current_revision(db) is None


def test_upgrade_is_idempotent(any_db_url):
    db = open_database(any_db_url, create=True)
    upgrade(db)
    upgrade(db)
    assert current_revision(db) == SCHEMA_HEAD


def test_commands_refuse_a_database_behind_the_schema(cli, sqlite_url, tmp_path):
    db = open_database(sqlite_url, create=True)
    with db.engine.begin() as conn:  # an empty database file: schema behind
        conn.exec_driver_sql("CREATE TABLE unrelated (x INTEGER)")
    result = cli("--db", sqlite_url, "hosts")
    assert result.code == 3
    assert "run `klpfleet db upgrade`" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_missing_sqlite_file_is_not_created_by_read_commands(cli, tmp_path):
    path = tmp_path / "nothing-here.db"
    result = cli("--db", str(path), "status")
    assert result.code == 3
    assert not path.exists()
    assert "klpfleet db upgrade" in result.err


def test_db_upgrade_creates_and_reports(cli, tmp_path):
    path = tmp_path / "sub" / "new.db"
    result = cli("--db", str(path), "db", "upgrade")
    assert result.code == 0, result.err
    assert path.exists()
    again = cli("--db", str(path), "db", "current", "-o", "json")
    assert again.code == 0
    assert again.json()["data"]["revision"] == SCHEMA_HEAD


def test_sqlite_pragmas_are_set(sqlite_db):
    with sqlite_db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_data_survives_the_upgrade_from_0001(any_db_url):
    from sqlalchemy import text

    db = open_database(any_db_url, create=True)
    upgrade(db, "0001")
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO hosts (id, name, vars, created_at, updated_at) "
                "VALUES (1, 'web1', '{}', '2026-01-01', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO patches (id, name, sha256, vermagic, kernel_release, depends, size, cves, "
                "path, added_at) VALUES (1, 'lp', 'ab', 'v', 'r', '[]', 1, '[]', '/p', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO host_patches (host_id, patch_id, state, objects, stalled_tasks, attempts, "
                "observed_at, observed_by) VALUES (1, 1, 'refused', '{}', '[]', 2, '2026-01-01', 't')"
            )
        )
    upgrade(db)
    with db.engine.connect() as conn:
        row = conn.execute(text("SELECT state, attempts, host_clean FROM host_patches")).one()
    assert tuple(row) == ("refused", 2, None)
