"""A patch found bad can be blocked: no rollout, reconcile or boot loads it again until it is unblocked

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 22:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("patches") as batch:
        batch.add_column(sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("blocked_by", sa.String(255), nullable=True))
        batch.add_column(sa.Column("blocked_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("patches") as batch:
        batch.drop_column("blocked_reason")
        batch.drop_column("blocked_by")
        batch.drop_column("blocked_at")
