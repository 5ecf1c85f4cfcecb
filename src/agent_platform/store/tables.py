"""Table definitions (SQLAlchemy Core). The execution row is the job; steps have their own table.

Every tenant-owned table carries `tenant_id`, and every query filters by it.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TZDateTime = DateTime(timezone=True)
BigId = BigInteger().with_variant(Integer, "sqlite")

executions = Table(
    "executions",
    metadata,
    Column("id", Uuid(as_uuid=False), primary_key=True),
    Column("tenant_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("task", Text, nullable=False),
    Column("tools", JSON, nullable=True),
    Column("model", String(200), nullable=False),
    Column("max_steps", Integer, nullable=False),
    Column("request_metadata", JSON, nullable=False),
    Column("timeout_s", Integer, nullable=False),
    Column("result", Text),
    Column("error", Text),
    Column("error_code", String(64)),
    Column("stop_reason", String(32)),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False),
    Column("worker_id", String(128)),
    Column("lease_until", TZDateTime),
    Column("input_tokens", BigInteger, nullable=False, server_default=text("0")),
    Column("output_tokens", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", TZDateTime, nullable=False),
    Column("started_at", TZDateTime),
    Column("completed_at", TZDateTime),
    Column("updated_at", TZDateTime, nullable=False),
    Column("event_seq", Integer, nullable=False, server_default=text("0")),
    Column("cancel_requested_at", TZDateTime),
    Column("session_id", Uuid(as_uuid=False)),
    Column("webhook_url", Text),
    Column("webhook_steps", Boolean, nullable=False, server_default=false()),
    Column("idempotency_key", String(255)),
    Index("ix_executions_session_created", "session_id", "created_at"),
    # Newest-first listing per tenant, optionally by status: keyset-friendly.
    Index("ix_executions_tenant_created", "tenant_id", "created_at", "id"),
    Index("ix_executions_tenant_status_created", "tenant_id", "status", "created_at"),
    # The queue: only queued rows, oldest first; only running rows for the reaper. The
    # reaper compares `lease_until` (which implies it is not null); the worker's writes,
    # fenced on `status = 'running'` and looking a row up by id, do not, so they cannot take
    # this small index for a better path than the primary key and scan every running row.
    Index(
        "ix_executions_queued",
        "created_at",
        postgresql_where=text("status = 'queued'"),
        sqlite_where=text("status = 'queued'"),
    ),
    Index(
        "ix_executions_running_lease",
        "lease_until",
        postgresql_where=text("status = 'running' AND lease_until IS NOT NULL"),
        sqlite_where=text("status = 'running' AND lease_until IS NOT NULL"),
    ),
)

steps = Table(
    "steps",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "execution_id",
        Uuid(as_uuid=False),
        ForeignKey("executions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("tenant_id", String(128), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("type", String(16), nullable=False),
    Column("model_output", Text),
    Column("thought", Text),
    Column("code", Text),
    Column("observation", Text),
    Column("tool_calls", JSON, nullable=False),
    Column("error", Text),
    Column("final_answer", Text),
    Column("note", Text),
    Column("partial", Boolean, nullable=False, server_default=false()),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("retries", Integer, nullable=False),
    Column("started_at", TZDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    UniqueConstraint("execution_id", "attempt", "step"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", Uuid(as_uuid=False), primary_key=True),
    Column("tenant_id", String(128), nullable=False),
    Column("title", String(200)),
    Column("metadata", JSON, nullable=False),
    Column("created_at", TZDateTime, nullable=False),
    Column("updated_at", TZDateTime, nullable=False),
    Index("ix_sessions_tenant_created", "tenant_id", "created_at"),
)

# The per-execution event log behind SSE: `seq` is the event id a client resumes after.
events = Table(
    "events",
    metadata,
    Column(
        "execution_id",
        Uuid(as_uuid=False),
        ForeignKey("executions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True),
    Column("tenant_id", String(128), nullable=False),
    Column("type", String(32), nullable=False),
    Column("data", JSON, nullable=False),
    Column("created_at", TZDateTime, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("execution_id", Uuid(as_uuid=False), nullable=False),
    Column("created_at", TZDateTime, nullable=False),
    Column("expires_at", TZDateTime, nullable=False),
    Index("ix_idempotency_keys_expires", "expires_at"),
)
