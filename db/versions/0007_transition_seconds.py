"""wave_hosts.transition_seconds: how long each host's transition took (the module waits for it and says)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("wave_hosts") as batch:
        batch.add_column(sa.Column("transition_seconds", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("wave_hosts") as batch:
        batch.drop_column("transition_seconds")
