"""Alembic environment. klpfleet runs migrations programmatically (klpfleet.db.migrate), handing over
its own connection; render_as_batch lets constraint changes work on SQLite."""

from alembic import context

from klpfleet.db.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `klpfleet db upgrade`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
