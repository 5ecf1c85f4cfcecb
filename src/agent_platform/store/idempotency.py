"""Idempotency keys (as Stripe and the IETF draft define them): a key maps to the execution
its first request created, for 24 h; the same key with another body is refused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_platform.store.repos import as_utc
from agent_platform.store.tables import idempotency_keys

TTL = timedelta(hours=24)


@dataclass(frozen=True)
class Claimed:
    """`execution_id` is ours to create when `fresh`, else the one created before."""

    fresh: bool
    execution_id: str
    request_hash: str


async def claim_key(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    key: str,
    request_hash: str,
    execution_id: str,
    now: datetime,
    is_postgres: bool,
) -> Claimed:
    """Insert the key, or find who holds it. A concurrent insert of the same key waits for
    the first transaction (unique index), so two requests never both get `fresh`."""
    await conn.execute(
        delete(idempotency_keys).where(
            idempotency_keys.c.tenant_id == tenant_id,
            idempotency_keys.c.key == key,
            idempotency_keys.c.expires_at < now,
        )
    )
    dialect_insert = postgresql.insert if is_postgres else sqlite.insert
    inserted = await conn.execute(
        dialect_insert(idempotency_keys)
        .values(
            tenant_id=tenant_id,
            key=key,
            request_hash=request_hash,
            execution_id=execution_id,
            created_at=now,
            expires_at=now + TTL,
        )
        .on_conflict_do_nothing()
        .returning(idempotency_keys.c.execution_id)
    )
    if inserted.first() is not None:
        return Claimed(True, execution_id, request_hash)
    row = (
        await conn.execute(
            select(idempotency_keys.c.execution_id, idempotency_keys.c.request_hash).where(
                idempotency_keys.c.tenant_id == tenant_id, idempotency_keys.c.key == key
            )
        )
    ).one()
    return Claimed(False, str(row.execution_id), row.request_hash)


async def purge_expired(conn: AsyncConnection, *, now: datetime) -> int:
    result = await conn.execute(delete(idempotency_keys).where(idempotency_keys.c.expires_at < now))
    return int(result.rowcount or 0)


__all__ = ["TTL", "Claimed", "as_utc", "claim_key", "purge_expired"]
