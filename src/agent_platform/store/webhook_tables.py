"""Webhook outbox tables (SQLAlchemy Core), registered on the shared `metadata`.

`webhook_deliveries` is the durable outbox: a row is written in the same transaction that
finishes an execution, so a committed result always has its notification queued. The
dispatcher claims due rows and logs every try in `webhook_attempts`.

`next_attempt_at` doubles as the claim lease: claiming a row moves it past the longest a
send can take, so no other dispatcher sees it as due while it is in flight, and a dispatcher
that dies mid-send simply lets it fall due again. `attempts` is the fencing token: a claim
bumps it, and the result of a send is only written if the row still carries that number.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)

from agent_platform.store.tables import BigId, TZDateTime, metadata

__all__ = ["webhook_attempts", "webhook_deliveries"]

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Uuid(as_uuid=False), primary_key=True),
    Column("tenant_id", String(128), nullable=False),
    Column(
        "execution_id",
        Uuid(as_uuid=False),
        ForeignKey("executions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("event_type", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", TZDateTime),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("created_at", TZDateTime, nullable=False),
    Column("delivered_at", TZDateTime),
    Column("updated_at", TZDateTime, nullable=False),
    # The dispatcher's scan: only pending rows, earliest due first.
    Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    Index("ix_webhook_deliveries_execution_id", "execution_id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "delivery_id",
        Uuid(as_uuid=False),
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("attempt", Integer, nullable=False),
    Column("started_at", TZDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    UniqueConstraint("delivery_id", "attempt"),
)
