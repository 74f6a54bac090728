"""fine-tuning jobs, metrics, registered models

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "train_jobs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("dataset", sa.String(length=80), nullable=False),
        sa.Column("method", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=True),
        sa.Column("gpu", sa.String(length=40), nullable=True),
        sa.Column("share_node", sa.Boolean(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("offering", sa.JSON(), nullable=False),
        sa.Column("memory_gb", sa.Float(), nullable=False),
        sa.Column("node_id", sa.String(length=40), nullable=True),
        sa.Column("price_per_hour", sa.Float(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("workload", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("progress_offset", sa.Integer(), nullable=False),
        sa.Column("rerun_of", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("state_changed_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("billed_until", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("train_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_train_jobs_state"), ["state"], unique=False)

    op.create_table(
        "train_metrics",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("epoch", sa.Float(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("lr", sa.Float(), nullable=True),
        sa.Column("grad_norm", sa.Float(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=True),
        sa.Column("eval_loss", sa.Float(), nullable=True),
        sa.Column("energy_kwh", sa.Float(), nullable=True),
        sa.Column("co2_kg", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["train_jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("train_metrics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_train_metrics_job_id"), ["job_id"], unique=False)
        batch_op.create_index("ix_train_metrics_job_step", ["job_id", "step"], unique=True)

    op.create_table(
        "registered_models",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["train_jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registered_models_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registered_models_job_id"))
    op.drop_table("registered_models")
    with op.batch_alter_table("train_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_train_metrics_job_step")
        batch_op.drop_index(batch_op.f("ix_train_metrics_job_id"))
    op.drop_table("train_metrics")
    with op.batch_alter_table("train_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_train_jobs_state"))
    op.drop_table("train_jobs")
