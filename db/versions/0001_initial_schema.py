"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-27 03:29:36.125511
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_groups")),
        sa.UniqueConstraint("name", name=op.f("uq_groups_name")),
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("user", sa.String(length=255), nullable=True),
        sa.Column("key_file", sa.Text(), nullable=True),
        sa.Column("vars", sa.JSON(), nullable=False),
        sa.Column("kernel_release", sa.String(length=255), nullable=True),
        sa.Column("livepatch_supported", sa.Boolean(), nullable=True),
        sa.Column("reachable", sa.Boolean(), nullable=True),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("name", name=op.f("uq_hosts_name")),
    )
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hosts_kernel_release"), ["kernel_release"], unique=False)

    op.create_table(
        "patches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("srcversion", sa.String(length=64), nullable=True),
        sa.Column("vermagic", sa.Text(), nullable=False),
        sa.Column("kernel_release", sa.String(length=255), nullable=False),
        sa.Column("depends", sa.JSON(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("cves", sa.JSON(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patches")),
        sa.UniqueConstraint("sha256", name=op.f("uq_patches_sha256")),
    )
    with op.batch_alter_table("patches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_patches_kernel_release"), ["kernel_release"], unique=False)
        batch_op.create_index(batch_op.f("ix_patches_name"), ["name"], unique=False)

    op.create_table(
        "host_groups",
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name=op.f("fk_host_groups_group_id_groups"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_groups_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host_id", "group_id", name=op.f("pk_host_groups")),
    )
    op.create_table(
        "host_labels",
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_labels_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host_id", "key", name=op.f("pk_host_labels")),
    )
    with op.batch_alter_table("host_labels", schema=None) as batch_op:
        batch_op.create_index("ix_host_labels_key_value", ["key", "value"], unique=False)

    op.create_table(
        "host_patches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("patch_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=True),
        sa.Column("transition", sa.Boolean(), nullable=True),
        sa.Column("stack_order", sa.Integer(), nullable=True),
        sa.Column("replace", sa.Boolean(), nullable=True),
        sa.Column("objects", sa.JSON(), nullable=False),
        sa.Column("last_outcome", sa.String(length=32), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("errno", sa.Integer(), nullable=True),
        sa.Column("refused_object", sa.String(length=255), nullable=True),
        sa.Column("stalled_tasks", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("observed_by", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_patches_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["patch_id"], ["patches.id"], name=op.f("fk_host_patches_patch_id_patches"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_patches")),
        sa.UniqueConstraint("host_id", "patch_id", name=op.f("uq_host_patches_host_id")),
    )
    with op.batch_alter_table("host_patches", schema=None) as batch_op:
        batch_op.create_index("ix_host_patches_patch_id_state", ["patch_id", "state"], unique=False)
        batch_op.create_index("ix_host_patches_state", ["state"], unique=False)

    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patch_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("selector", sa.Text(), nullable=True),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=True),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_token", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["patch_id"], ["patches.id"], name=op.f("fk_rollouts_patch_id_patches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollouts_status"), ["status"], unique=False)

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=True),
        sa.Column("host_name", sa.String(length=255), nullable=True),
        sa.Column("patch_id", sa.Integer(), nullable=True),
        sa.Column("patch_name", sa.String(length=255), nullable=True),
        sa.Column("rollout_id", sa.Integer(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_events_host_id_hosts"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["patch_id"], ["patches.id"], name=op.f("fk_events_patch_id_patches"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_events_rollout_id_rollouts"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_at"), ["at"], unique=False)
        batch_op.create_index("ix_events_host_id_at", ["host_id", "at"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_kind"), ["kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_rollout_id"), ["rollout_id"], unique=False)

    op.create_table(
        "waves",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_waves_rollout_id_rollouts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waves")),
        sa.UniqueConstraint("rollout_id", "index", name=op.f("uq_waves_rollout_id")),
    )
    op.create_table(
        "wave_hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("wave_id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_wave_hosts_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_wave_hosts_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["wave_id"], ["waves.id"], name=op.f("fk_wave_hosts_wave_id_waves"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wave_hosts")),
        sa.UniqueConstraint("rollout_id", "host_id", name=op.f("uq_wave_hosts_rollout_id")),
    )
    with op.batch_alter_table("wave_hosts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_wave_hosts_host_id"), ["host_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_wave_hosts_rollout_id"), ["rollout_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("wave_hosts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_wave_hosts_rollout_id"))
        batch_op.drop_index(batch_op.f("ix_wave_hosts_host_id"))

    op.drop_table("wave_hosts")
    op.drop_table("waves")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_rollout_id"))
        batch_op.drop_index(batch_op.f("ix_events_kind"))
        batch_op.drop_index("ix_events_host_id_at")
        batch_op.drop_index(batch_op.f("ix_events_at"))

    op.drop_table("events")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollouts_status"))

    op.drop_table("rollouts")
    with op.batch_alter_table("host_patches", schema=None) as batch_op:
        batch_op.drop_index("ix_host_patches_state")
        batch_op.drop_index("ix_host_patches_patch_id_state")

    op.drop_table("host_patches")
    with op.batch_alter_table("host_labels", schema=None) as batch_op:
        batch_op.drop_index("ix_host_labels_key_value")

    op.drop_table("host_labels")
    op.drop_table("host_groups")
    with op.batch_alter_table("patches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patches_name"))
        batch_op.drop_index(batch_op.f("ix_patches_kernel_release"))

    op.drop_table("patches")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hosts_kernel_release"))

    op.drop_table("hosts")
    op.drop_table("groups")
