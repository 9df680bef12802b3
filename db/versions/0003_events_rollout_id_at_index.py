"""events: index (rollout_id, at) for a rollout's latest events

`rollout status` read a rollout's newest events by scanning the whole events table in time order on
SQLite (1.4 s at 5,000,000 events). The composite index replaces the single-column one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 07:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_rollout_id_at", ["rollout_id", "at"], unique=False)
        batch_op.drop_index("ix_events_rollout_id")


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_rollout_id", ["rollout_id"], unique=False)
        batch_op.drop_index("ix_events_rollout_id_at")
