"""Live executions: per-execution event log, cancel flag, per-request timeout, idempotency keys,
sessions, webhook target.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("title", sa.String(200)),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_tenant_created", "sessions", ["tenant_id", "created_at"])
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("event_seq", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("cancel_requested_at", TZ))
        batch.add_column(sa.Column("session_id", sa.Uuid(as_uuid=False)))
        batch.add_column(sa.Column("webhook_url", sa.Text))
        batch.add_column(
            sa.Column("webhook_steps", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("idempotency_key", sa.String(255)))
    op.create_index("ix_executions_session_created", "executions", ["session_id", "created_at"])
    op.create_table(
        "events",
        sa.Column("execution_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("execution_id", "seq", name="pk_events"),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.id"],
            name="fk_events_execution_id_executions",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("execution_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_expires", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("events")
    op.drop_index("ix_executions_session_created", table_name="executions")
    with op.batch_alter_table("executions") as batch:
        for column in (
            "idempotency_key",
            "webhook_steps",
            "webhook_url",
            "session_id",
            "cancel_requested_at",
            "event_seq",
        ):
            batch.drop_column(column)
    op.drop_index("ix_sessions_tenant_created", table_name="sessions")
    op.drop_table("sessions")
