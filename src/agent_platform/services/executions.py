"""Execution use cases: submit, wait, read, list. Called by routers, the CLI and the console."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from agent_platform.config import Settings
from agent_platform.domain import (
    WAKE_CHANNEL,
    Execution,
    ExecutionStatus,
    execution_channel,
    utcnow,
)
from agent_platform.errors import InvalidRequest, NotFound
from agent_platform.events import EventBus
from agent_platform.runtime.providers import Providers
from agent_platform.store import repos
from agent_platform.store.db import Database
from agent_platform.tools.registry import ToolRegistry


@dataclass(frozen=True)
class Submission:
    task: str
    tools: list[str] | None = None
    model: str | None = None
    max_steps: int | None = None
    metadata: dict[str, Any] | None = None


class ExecutionService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: EventBus,
        registry: ToolRegistry,
        providers: Providers,
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.registry = registry
        self.providers = providers

    def prepare(self, tenant_id: str, sub: Submission) -> Execution:
        """Validate a submission against the settings and build its (unsaved) row."""
        s = self.settings
        task = sub.task.strip()
        if not task:
            raise InvalidRequest("task must not be empty", field="task")
        if len(sub.task) > s.max_task_chars:
            raise InvalidRequest(
                f"task is too long ({len(sub.task)} characters; the limit is {s.max_task_chars})",
                field="task",
            )
        tools = self.registry.resolve(sub.tools)
        model = sub.model or s.default_model
        if model not in s.models:
            raise InvalidRequest(
                f"model {model!r} is not available; allowed models: {', '.join(s.models)}",
                field="model",
                allowed=s.models,
            )
        max_steps = sub.max_steps if sub.max_steps is not None else s.default_max_steps
        if not 1 <= max_steps <= s.max_steps_limit:
            raise InvalidRequest(
                f"max_steps must be between 1 and {s.max_steps_limit}", field="max_steps"
            )
        metadata = sub.metadata or {}
        if len(json.dumps(metadata, default=str)) > s.max_metadata_bytes:
            raise InvalidRequest(
                f"metadata is too large (limit {s.max_metadata_bytes} bytes of JSON)",
                field="metadata",
            )
        self.providers.check(model)
        now = utcnow()
        return Execution(
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            status=ExecutionStatus.QUEUED,
            task=sub.task,
            tools=tools,
            model=model,
            max_steps=max_steps,
            metadata=metadata,
            created_at=now,
            max_attempts=s.max_attempts,
            timeout_s=s.max_execution_time,
        )

    async def enqueue(self, execution: Execution) -> None:
        """Commit the row, then wake a worker. Only after this may the client hear 2xx."""
        async with self.db.begin() as conn:
            await repos.insert_execution(conn, execution)
        await self.bus.publish(WAKE_CHANNEL, {"execution_id": execution.id})

    async def submit(self, tenant_id: str, sub: Submission) -> Execution:
        execution = self.prepare(tenant_id, sub)
        await self.enqueue(execution)
        return execution

    async def submit_and_wait(
        self, tenant_id: str, sub: Submission, *, timeout_s: float | None = None
    ) -> Execution:
        """Submit, then wait for the end (or `timeout_s`) and return the execution as it is.

        The client going away cancels only this wait, never the execution."""
        execution = self.prepare(tenant_id, sub)
        async with self.bus.subscribe(execution_channel(execution.id)) as events:
            await self.enqueue(execution)
            await self._wait_final(tenant_id, execution.id, events, timeout_s)
        return await self.get(tenant_id, execution.id)

    async def _wait_final(
        self,
        tenant_id: str,
        execution_id: str,
        events: asyncio.Queue[dict[str, Any]],
        timeout_s: float | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s or self.settings.sync_wait_s)
        poll_s = max(0.5, self.settings.poll_interval_s)
        while (remaining := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                message = await asyncio.wait_for(events.get(), timeout=min(poll_s, remaining))
                if ExecutionStatus(message.get("status", "running")).is_final:
                    return
                continue
            async with self.db.connect() as conn:  # a lost notification only delays us
                status = await repos.get_status(conn, tenant_id, execution_id)
            if status is None or ExecutionStatus(status).is_final:
                return

    async def get(self, tenant_id: str, execution_id: str) -> Execution:
        canonical = repos.parse_id(execution_id)
        if canonical is None:
            raise NotFound(f"execution {execution_id!r} not found")
        async with self.db.connect() as conn:
            execution = await repos.get_execution(conn, tenant_id, canonical)
        if execution is None:
            raise NotFound(f"execution {execution_id!r} not found")
        return execution

    async def list(
        self,
        tenant_id: str,
        *,
        status: ExecutionStatus | None,
        limit: int,
        offset: int,
        include_steps: bool,
    ) -> tuple[list[Execution], int]:
        async with self.db.connect() as conn:
            items, total = await repos.list_executions(
                conn, tenant_id, status=status, limit=limit, offset=offset
            )
            if include_steps:
                await repos.steps_for(conn, tenant_id, items)
        return items, total
