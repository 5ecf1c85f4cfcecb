"""Executions (the job rows) and their steps.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", sa.Uuid(as_uuid=False), primary_key=True),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("tools", sa.JSON, nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("max_steps", sa.Integer, nullable=False),
        sa.Column("request_metadata", sa.JSON, nullable=False),
        sa.Column("timeout_s", sa.Integer, nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("error_code", sa.String(64)),
        sa.Column("stop_reason", sa.String(32)),
        sa.Column("attempt", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(128)),
        sa.Column("lease_until", TZ),
        sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("started_at", TZ),
        sa.Column("completed_at", TZ),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_executions"),
    )
    op.create_index("ix_executions_tenant_created", "executions", ["tenant_id", "created_at", "id"])
    op.create_index(
        "ix_executions_tenant_status_created",
        "executions",
        ["tenant_id", "status", "created_at"],
    )
    op.create_index(
        "ix_executions_queued",
        "executions",
        ["created_at"],
        postgresql_where=sa.text("status = 'queued'"),
        sqlite_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "ix_executions_running_lease",
        "executions",
        ["lease_until"],
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "steps",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("execution_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("model_output", sa.Text),
        sa.Column("thought", sa.Text),
        sa.Column("code", sa.Text),
        sa.Column("observation", sa.Text),
        sa.Column("tool_calls", sa.JSON, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("final_answer", sa.Text),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_steps"),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.id"],
            name="fk_steps_execution_id_executions",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "execution_id", "attempt", "step", name="uq_steps_execution_id_attempt_step"
        ),
    )


def downgrade() -> None:
    op.drop_table("steps")
    op.drop_table("executions")
