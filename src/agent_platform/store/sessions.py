"""SQL for sessions (multi-turn conversations) and the per-session view of executions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_platform.domain import Execution, ExecutionStatus
from agent_platform.store.repos import as_utc, execution_from_row, newest_page, page_and_total
from agent_platform.store.tables import executions, idempotency_keys, sessions

ACTIVE = (ExecutionStatus.QUEUED.value, ExecutionStatus.RUNNING.value)


@dataclass
class Session:
    id: str
    tenant_id: str
    title: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    executions: list[Execution] | None = None


def _session(row: Any) -> Session:
    return Session(
        id=str(row.id),
        tenant_id=row.tenant_id,
        title=row.title,
        metadata=row.metadata or {},
        created_at=as_utc(row.created_at),  # type: ignore[arg-type]
        updated_at=as_utc(row.updated_at),  # type: ignore[arg-type]
    )


async def insert(conn: AsyncConnection, session: Session) -> None:
    await conn.execute(
        sessions.insert().values(
            id=session.id,
            tenant_id=session.tenant_id,
            title=session.title,
            metadata=session.metadata,
            created_at=session.created_at,
            updated_at=session.updated_at,
        )
    )


async def get(conn: AsyncConnection, tenant_id: str, session_id: str) -> Session | None:
    row = (
        await conn.execute(
            select(sessions).where(sessions.c.id == session_id, sessions.c.tenant_id == tenant_id)
        )
    ).first()
    return _session(row) if row else None


async def lock(conn: AsyncConnection, tenant_id: str, session_id: str, now: datetime) -> bool:
    """Touch the session row inside a submit: serialises submits to one session."""
    result = await conn.execute(
        update(sessions)
        .where(sessions.c.id == session_id, sessions.c.tenant_id == tenant_id)
        .values(updated_at=now)
    )
    return result.rowcount == 1


async def list_page(
    conn: AsyncConnection, tenant_id: str, *, limit: int, offset: int
) -> tuple[list[Session], int]:
    statement = newest_page(sessions, sessions.c.tenant_id == tenant_id)
    rows, total = page_and_total(await conn.execute(statement, {"limit": limit, "offset": offset}))
    return [_session(r) for r in rows], total


async def executions_of(
    conn: AsyncConnection, tenant_id: str, session_id: str, *, active_only: bool = False
) -> list[Execution]:
    query = select(executions).where(
        executions.c.tenant_id == tenant_id, executions.c.session_id == session_id
    )
    if active_only:
        query = query.where(executions.c.status.in_(ACTIVE))
    rows = await conn.execute(query.order_by(executions.c.created_at))
    return [execution_from_row(r) for r in rows]


async def delete_session(conn: AsyncConnection, tenant_id: str, session_id: str) -> None:
    """The session, its executions (steps and events cascade) and their idempotency keys."""
    ids = select(executions.c.id).where(
        executions.c.tenant_id == tenant_id, executions.c.session_id == session_id
    )
    await conn.execute(
        delete(idempotency_keys).where(
            idempotency_keys.c.tenant_id == tenant_id,
            idempotency_keys.c.execution_id.in_(ids.scalar_subquery()),
        )
    )
    await conn.execute(
        delete(executions).where(
            executions.c.tenant_id == tenant_id, executions.c.session_id == session_id
        )
    )
    await conn.execute(
        delete(sessions).where(sessions.c.id == session_id, sessions.c.tenant_id == tenant_id)
    )
