"""Alembic, driven from code: the scripts live in db/ (a checkout) or klpfleet._migrations (installed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from klpfleet.db.engine import Database


def script_location() -> str:
    checkout = Path(__file__).resolve().parents[2] / "db"
    if (checkout / "env.py").exists():
        return str(checkout)
    import klpfleet._migrations as installed

    return str(Path(installed.__file__).parent)


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def upgrade(db: Database, revision: str = "head") -> None:
    with db.engine.begin() as conn:
        command.upgrade(_config(conn), revision)


def downgrade(db: Database, revision: str) -> None:
    with db.engine.begin() as conn:
        command.downgrade(_config(conn), revision)


def autogenerate(db: Database, message: str, rev_id: str) -> None:
    """Developer helper: write a new revision from the models' difference to the database."""
    with db.engine.begin() as conn:
        command.revision(_config(conn), message=message, autogenerate=True, rev_id=rev_id)
