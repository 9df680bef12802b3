"""rollouts: operators' runtime control in columns of its own; CHECK constraints on every status

`promote` used to write `promoted_full` and `gate_overrides` into the rollout's policy JSON, mixing what was
planned with what operators changed since. They become columns (values carried over), and the status
columns of rollouts, waves and wave hosts (and wave hosts' outcome) only take the values the controller's
enums name.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 08:10:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The values as of this revision (a later enum change gets a migration of its own).
ROLLOUT = ("planned", "running", "paused", "aborting", "completed", "aborted", "rolled_back", "failed")
WAVE = ("pending", "running", "blocked", "completed")
WAVE_HOST = ("pending", "running", "done", "rolled_back")
OUTCOME = ("applied", "refused", "stalled", "failed", "unreachable", "health_failed")
CONTROL_KEYS = ("promoted_full", "gate_overrides")


def one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("promoted_full", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("gate_overrides", sa.JSON(), nullable=False, server_default="[]"))
    rollouts = sa.table(
        "rollouts",
        sa.column("id", sa.Integer),
        sa.column("policy", sa.JSON),
        sa.column("promoted_full", sa.Boolean),
        sa.column("gate_overrides", sa.JSON),
    )
    conn = op.get_bind()
    for rollout_id, policy in conn.execute(sa.select(rollouts.c.id, rollouts.c.policy)).all():
        policy = policy if isinstance(policy, dict) else json.loads(policy or "{}")
        if not any(key in policy for key in CONTROL_KEYS):
            continue
        conn.execute(
            rollouts.update()
            .where(rollouts.c.id == rollout_id)
            .values(
                promoted_full=bool(policy.get("promoted_full")),
                gate_overrides=sorted(policy.get("gate_overrides") or []),
                policy={k: v for k, v in policy.items() if k not in CONTROL_KEYS},
            )
        )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_check_constraint("status_valid", one_of("status", ROLLOUT))
    with op.batch_alter_table("waves", schema=None) as batch_op:
        batch_op.create_check_constraint("status_valid", one_of("status", WAVE))
    with op.batch_alter_table("wave_hosts", schema=None) as batch_op:
        batch_op.create_check_constraint("status_valid", one_of("status", WAVE_HOST))
        batch_op.create_check_constraint("outcome_valid", one_of("outcome", OUTCOME))


def downgrade() -> None:
    with op.batch_alter_table("wave_hosts", schema=None) as batch_op:
        batch_op.drop_constraint("outcome_valid", type_="check")
        batch_op.drop_constraint("status_valid", type_="check")
    with op.batch_alter_table("waves", schema=None) as batch_op:
        batch_op.drop_constraint("status_valid", type_="check")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_constraint("status_valid", type_="check")
    rollouts = sa.table(
        "rollouts",
        sa.column("id", sa.Integer),
        sa.column("policy", sa.JSON),
        sa.column("promoted_full", sa.Boolean),
        sa.column("gate_overrides", sa.JSON),
    )
    conn = op.get_bind()
    for rollout_id, policy, full, overrides in conn.execute(sa.select(rollouts)).all():
        policy = policy if isinstance(policy, dict) else json.loads(policy or "{}")
        overrides = overrides if isinstance(overrides, list) else json.loads(overrides or "[]")
        if full or overrides:
            conn.execute(
                rollouts.update()
                .where(rollouts.c.id == rollout_id)
                .values(policy={**policy, "promoted_full": bool(full), "gate_overrides": overrides})
            )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("gate_overrides")
        batch_op.drop_column("promoted_full")
