"""router token usage: one row per deployment router process (start id), latest cumulative counters

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "router_usage",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("deployment_id", sa.String(length=40), nullable=False),
        sa.Column("start_id", sa.String(length=40), nullable=False),
        sa.Column("router_started_at", sa.Float(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("by_key", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("router_usage", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_router_usage_deployment_id"), ["deployment_id"], unique=False)
        batch_op.create_index("ux_router_usage_start", ["deployment_id", "start_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("router_usage", schema=None) as batch_op:
        batch_op.drop_index("ux_router_usage_start")
        batch_op.drop_index(batch_op.f("ix_router_usage_deployment_id"))
    op.drop_table("router_usage")
