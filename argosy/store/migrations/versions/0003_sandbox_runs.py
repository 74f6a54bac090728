"""sandbox runs: one row per execution brokered by the server (its ledger rows are in `ledger`)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandbox_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("node_id", sa.String(length=40), nullable=True),
        sa.Column("session_id", sa.String(length=40), nullable=True),
        sa.Column("language", sa.String(length=40), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=False),
        sa.Column("backend", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("signal", sa.Integer(), nullable=True),
        sa.Column("timed_out", sa.Boolean(), nullable=False),
        sa.Column("oom_killed", sa.Boolean(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("warm", sa.Boolean(), nullable=False),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sandbox_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sandbox_runs_node_id"), ["node_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sandbox_runs_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sandbox_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sandbox_runs_created_at"))
        batch_op.drop_index(batch_op.f("ix_sandbox_runs_node_id"))
    op.drop_table("sandbox_runs")
