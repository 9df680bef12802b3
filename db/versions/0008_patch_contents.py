"""What a patch patches (read from its .ko at `patch add`), which functions each host's patch has in sysfs, and
whether each host enforces module signatures

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 14:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Null for patches added before: `patch show` and the pre-flight read the stored .ko then, and keep what
    # they read.
    with op.batch_alter_table("patches") as batch:
        batch.add_column(sa.Column("contents", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("signature", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("signed", sa.Boolean(), nullable=True))
    with op.batch_alter_table("host_patches") as batch:
        batch.add_column(sa.Column("functions", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("module_signatures", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("module_signatures")
    with op.batch_alter_table("host_patches") as batch:
        batch.drop_column("functions")
    with op.batch_alter_table("patches") as batch:
        batch.drop_column("signed")
        batch.drop_column("signature")
        batch.drop_column("contents")
