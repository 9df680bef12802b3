"""ansible runs and host_clean

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 03:46:07.268649
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "ansible_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ident", sa.String(length=255), nullable=True),
        sa.Column("playbook", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_ansible_runs_rollout_id_rollouts"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ansible_runs")),
    )
    with op.batch_alter_table("ansible_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ansible_runs_ident"), ["ident"], unique=False)

    with op.batch_alter_table("host_patches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host_clean", sa.Boolean(), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("host_patches", schema=None) as batch_op:
        batch_op.drop_column("host_clean")

    with op.batch_alter_table("ansible_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ansible_runs_ident"))

    op.drop_table("ansible_runs")
