"""execution_nodes: machines that run the controller's Ansible jobs near the hosts (ansible-runner's worker)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "execution_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("ssh_user", sa.String(length=255), nullable=False),
        sa.Column("ssh_host", sa.String(length=255), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=False),
        sa.Column("key_file", sa.Text(), nullable=True),
        sa.Column("known_hosts", sa.Text(), nullable=True),
        sa.Column("runner", sa.Text(), nullable=False),
        sa.Column("keepalive_seconds", sa.Integer(), nullable=False),
        sa.Column("silent_after_seconds", sa.Integer(), nullable=False),
        sa.Column("serves_label", sa.String(length=64), nullable=True),
        sa.Column("serves_value", sa.String(length=255), nullable=True),
        sa.Column("capacity", sa.JSON(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("added_by", sa.String(length=255), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_nodes")),
        sa.UniqueConstraint("name", name=op.f("uq_execution_nodes_name")),
    )


def downgrade() -> None:
    op.drop_table("execution_nodes")
