"""Opening the database: URL resolution, SQLite pragmas, and the schema gate every command passes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from klpfleet.errors import DatabaseError, first_line

if TYPE_CHECKING:  # the ORM costs ~70 ms to import; `klpfleet status` does without it
    from sqlalchemy.orm import Session, sessionmaker

# The Alembic revision this code expects. tests/test_migrations.py checks it equals the scripts' head,
# so the schema gate needs no Alembic import on the hot path of every command.
SCHEMA_HEAD = "0009"

# How long a SQLite writer waits for another writer (KLPFLEET_BUSY_TIMEOUT seconds, default 10).
DEFAULT_BUSY_TIMEOUT_S = 10.0


def busy_timeout_ms() -> int:
    raw = os.environ.get("KLPFLEET_BUSY_TIMEOUT")
    try:
        seconds = float(raw) if raw else DEFAULT_BUSY_TIMEOUT_S
    except ValueError:
        raise DatabaseError(f"KLPFLEET_BUSY_TIMEOUT={raw!r}: expected seconds, e.g. 10") from None
    return max(0, int(seconds * 1000))


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "klpfleet"


def default_url() -> str:
    return f"sqlite:///{default_data_dir() / 'klpfleet.db'}"


def resolve_url(url: str | None) -> str:
    """--db beats KLPFLEET_DB beats the embedded SQLite default. A bare path means SQLite."""
    url = url or os.environ.get("KLPFLEET_DB") or default_url()
    if "://" not in url:
        url = f"sqlite:///{os.path.abspath(url)}"
    return url


def create_private_file(path: Path) -> None:
    """A new SQLite file readable by its owner only (SQLite gives its -wal and -shm files the same mode), in
    a directory created private when it did not exist."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise DatabaseError(f"cannot create the database {path}: {exc.strerror}") from None


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms()}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@dataclass
class Database:
    url: str
    engine: Engine

    @cached_property
    def session(self) -> sessionmaker[Session]:
        from sqlalchemy.orm import sessionmaker

        return sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def display_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    @cached_property
    def identity(self) -> str:
        """A short name for this database that holds no secret: run folders are kept apart by it."""
        import hashlib

        return hashlib.sha256(self.display_url().encode()).hexdigest()[:12]


def open_database(url: str | None = None, *, create: bool = False) -> Database:
    """Open (but do not migrate) the database. A missing SQLite file is only created when `create`."""
    resolved = resolve_url(url)
    try:
        parsed = make_url(resolved)
    except ArgumentError as exc:
        raise DatabaseError(f"bad database URL {resolved!r}: {exc}") from None
    kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        db_path = parsed.database
        if db_path and db_path != ":memory:":
            path = Path(db_path)
            if not path.exists():
                if not create:
                    raise DatabaseError(f"no database at {path}: run `klpfleet db upgrade` to create it")
                create_private_file(path)
        kwargs["connect_args"] = {"timeout": busy_timeout_ms() / 1000}
    elif parsed.get_backend_name() == "postgresql":
        # A long-lived driver outlives server restarts and failovers: test pooled connections before use.
        kwargs["pool_pre_ping"] = True
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
            resolved = parsed.render_as_string(hide_password=False)
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise DatabaseError(f"unsupported database URL {parsed.render_as_string()!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return Database(resolved, engine)


def current_revision(db: Database) -> str | None:
    try:
        with db.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        if _sqlite_disk_full(db):
            raise DatabaseError(
                f"cannot use the database {db.display_url()}: the disk holding it is full ({first_line(exc)})"
            ) from None
        raise DatabaseError(f"cannot reach the database {db.display_url()}: {first_line(exc)}") from None


def _sqlite_disk_full(db: Database) -> bool:
    """SQLite on a full disk fails to open with a bare 'disk I/O error' (its WAL index cannot be created)."""
    import shutil

    if db.engine.dialect.name != "sqlite" or not db.engine.url.database:
        return False
    try:
        return shutil.disk_usage(Path(db.engine.url.database).parent).free < 256 * 1024
    except OSError:
        return False


def is_newer_than_this_klpfleet(revision: str | None) -> bool:
    """Revisions are numbered 0001, 0002...; one past SCHEMA_HEAD was written by a newer klpfleet."""
    return revision is not None and revision.isascii() and revision.isdigit() and int(revision) > int(SCHEMA_HEAD)


def newer_schema_error(db: Database, revision: str) -> DatabaseError:
    return DatabaseError(
        f"database {db.display_url()} is at schema {revision}, newer than this klpfleet knows "
        f"(schema {SCHEMA_HEAD}): upgrade klpfleet, never the database, from here"
    )


def require_current_schema(db: Database) -> None:
    revision = current_revision(db)
    if revision == SCHEMA_HEAD:
        return
    if is_newer_than_this_klpfleet(revision):
        raise newer_schema_error(db, str(revision))
    where = "empty" if revision is None else f"at schema {revision}"
    raise DatabaseError(
        f"database {db.display_url()} is {where}, this klpfleet needs schema {SCHEMA_HEAD}: run `klpfleet db upgrade`"
    )


def connect(url: str | None = None) -> Database:
    """Open the database for an ordinary command: it must exist and be at the current schema."""
    db = open_database(url)
    require_current_schema(db)
    return db
