"""Session use cases: create, list, read (with executions), delete."""

from __future__ import annotations

import json
import uuid
from typing import Any

from agent_platform.config import Settings
from agent_platform.domain import CANCEL_CHANNEL, utcnow
from agent_platform.errors import InvalidRequest, NotFound
from agent_platform.events import EventBus
from agent_platform.store import repos
from agent_platform.store import sessions as session_repo
from agent_platform.store.db import Database
from agent_platform.store.sessions import Session


class SessionService:
    def __init__(self, settings: Settings, db: Database, bus: EventBus) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus

    async def create(
        self, tenant_id: str, *, title: str | None, metadata: dict[str, Any] | None
    ) -> Session:
        metadata = metadata or {}
        if len(json.dumps(metadata, default=str)) > self.settings.max_metadata_bytes:
            raise InvalidRequest("metadata is too large", field="metadata")
        now = utcnow()
        session = Session(
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            title=title,
            metadata=metadata,
            created_at=now,
            updated_at=now,
        )
        async with self.db.begin() as conn:
            await session_repo.insert(conn, session)
        return session

    async def get(self, tenant_id: str, session_id: str, *, with_executions: bool) -> Session:
        canonical = repos.parse_id(session_id)
        async with self.db.connect() as conn:
            session = await session_repo.get(conn, tenant_id, canonical) if canonical else None
            if session is None:
                raise NotFound(f"session {session_id!r} not found")
            if with_executions:
                session.executions = await session_repo.executions_of(conn, tenant_id, session.id)
        return session

    async def list(self, tenant_id: str, *, limit: int, offset: int) -> tuple[list[Session], int]:
        async with self.db.connect() as conn:
            return await session_repo.list_page(conn, tenant_id, limit=limit, offset=offset)

    async def delete(self, tenant_id: str, session_id: str) -> None:
        """Delete the session and its history; anything still running in it is stopped."""
        session = await self.get(tenant_id, session_id, with_executions=False)
        async with self.db.begin() as conn:
            active = await session_repo.executions_of(conn, tenant_id, session.id, active_only=True)
            await session_repo.delete_session(conn, tenant_id, session.id)
        for execution in active:
            await self.bus.publish(CANCEL_CHANNEL, {"execution_id": execution.id})
