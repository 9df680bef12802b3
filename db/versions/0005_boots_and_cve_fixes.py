"""hosts: the boot a host was last seen in; cve_fixes: kernel releases an operator marked as fixing a CVE

`boot_id` and `booted_at` let gather and the probe tell a reboot from a patch removed by hand: a patch applied
before a reboot and missing after it is `lost_at_reboot`. `cve_fixes` records `klpfleet cve fixed CVE-ID
--kernel-release R`: a host booted into R is covered for that CVE without any patch.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 17:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("boot_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("booted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "cve_fixes",
        sa.Column("cve", sa.String(length=64), nullable=False),
        sa.Column("kernel_release", sa.String(length=255), nullable=False),
        sa.Column("marked_by", sa.String(length=255), nullable=False),
        sa.Column("marked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("cve", "kernel_release", name=op.f("pk_cve_fixes")),
    )


def downgrade() -> None:
    op.drop_table("cve_fixes")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("booted_at")
        batch_op.drop_column("boot_id")
