"""Execution use cases: submit (wait, background, idempotent, in a session), read, list,
cancel. Called by routers, the CLI and the console."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Literal

from agent_platform.config import Settings
from agent_platform.domain import (
    CANCEL_CHANNEL,
    WAKE_CHANNEL,
    Execution,
    ExecutionStatus,
    RunOutcome,
    execution_channel,
    utcnow,
)
from agent_platform.errors import Conflict, InvalidRequest, NotFound
from agent_platform.events import EventBus
from agent_platform.queue import jobs
from agent_platform.runtime.providers import Providers
from agent_platform.store import idempotency, repos
from agent_platform.store import sessions as session_repo
from agent_platform.store.db import Database
from agent_platform.store.event_log import Event, ended_execution, notify
from agent_platform.tools.registry import ToolRegistry

OnBusy = Literal["enqueue", "reject", "interrupt"]


@dataclass(frozen=True)
class Submission:
    task: str
    tools: list[str] | None = None
    model: str | None = None
    max_steps: int | None = None
    metadata: dict[str, Any] | None = None
    session_id: str | None = None
    on_busy: OnBusy = "enqueue"
    timeout_seconds: int | None = None
    webhook_url: str | None = None
    webhook_steps: bool = False

    def fingerprint(self) -> str:
        """What an Idempotency-Key is bound to when the caller gives nothing more precise."""
        return hashlib.sha256(
            json.dumps(asdict(self), sort_keys=True, default=str).encode()
        ).hexdigest()


@dataclass(frozen=True)
class Submitted:
    execution: Execution
    replayed: bool = False  # an earlier request with the same Idempotency-Key created it


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
        if not sub.task.strip():
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
        timeout_s = sub.timeout_seconds or s.max_execution_time
        if not 1 <= timeout_s <= s.max_execution_time:
            raise InvalidRequest(
                f"timeout_seconds must be between 1 and {s.max_execution_time}",
                field="timeout_seconds",
            )
        metadata = sub.metadata or {}
        if len(json.dumps(metadata, default=str)) > s.max_metadata_bytes:
            raise InvalidRequest(
                f"metadata is too large (limit {s.max_metadata_bytes} bytes of JSON)",
                field="metadata",
            )
        webhook_url = sub.webhook_url or s.webhook_url
        if webhook_url and not webhook_url.startswith(("http://", "https://")):
            raise InvalidRequest("webhook_url must be an http(s) URL", field="webhook_url")
        session_id = None
        if sub.session_id is not None:
            session_id = repos.parse_id(sub.session_id)
            if session_id is None:
                raise NotFound(f"session {sub.session_id!r} not found")
        self.providers.check(model)
        return Execution(
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            status=ExecutionStatus.QUEUED,
            task=sub.task,
            tools=tools,
            model=model,
            max_steps=max_steps,
            metadata=metadata,
            created_at=utcnow(),
            max_attempts=s.max_attempts,
            timeout_s=timeout_s,
            session_id=session_id,
            webhook_url=webhook_url,
            webhook_steps=sub.webhook_steps,
        )

    async def submit(
        self,
        tenant_id: str,
        sub: Submission,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
        then_wait: float | None = None,
    ) -> Submitted:
        """Commit the row (and its first event), then wake a worker. Only after this may
        the client hear 2xx. With `then_wait`, also wait (up to that many seconds) for the
        execution to end, listening from before it could."""
        if then_wait is None:
            return await self._submit(tenant_id, sub, idempotency_key, fingerprint, None)
        channel_id = str(uuid.uuid4())
        async with self.bus.subscribe(execution_channel(channel_id)) as events:
            return await self._submit(
                tenant_id, sub, idempotency_key, fingerprint, (channel_id, events, then_wait)
            )

    async def _submit(
        self,
        tenant_id: str,
        sub: Submission,
        idempotency_key: str | None,
        fingerprint: str | None,
        waiting: tuple[str, asyncio.Queue[dict[str, Any]], float] | None,
    ) -> Submitted:
        execution = self.prepare(tenant_id, sub)
        if waiting is not None:
            execution.id = waiting[0]  # the id we already listen on
        execution.idempotency_key = idempotency_key
        existing = await self._insert(
            tenant_id, execution, sub, idempotency_key, fingerprint or sub.fingerprint()
        )
        if existing is not None:  # an earlier request with this Idempotency-Key made it
            if waiting is not None and not existing.status.is_final:
                existing = await self.wait(tenant_id, existing.id, waiting[2]) or existing
            return Submitted(existing, replayed=True)
        if waiting is not None:
            ended = await self.wait(tenant_id, execution.id, waiting[2], events=waiting[1])
            return Submitted(ended or execution)
        return Submitted(execution)

    async def _insert(
        self,
        tenant_id: str,
        execution: Execution,
        sub: Submission,
        idempotency_key: str | None,
        fingerprint: str,
    ) -> Execution | None:
        """One transaction: idempotency key, session turn, the row and its first event.
        Returns the existing execution when the Idempotency-Key was used before."""
        interrupted: list[Execution] = []
        events: list[tuple[str, list[Event]]] = []
        # The `execution` event gets no live-stream notice: nobody can follow an execution
        # before it exists, and readers start from the database.
        first = {"execution_id": execution.id, "status": "queued"}
        if idempotency_key is None and execution.session_id is None and not self.db.is_sqlite:
            async with self.db.connect() as conn:  # one statement: atomic on its own
                await repos.create_execution(conn, execution, first)
            await self.bus.publish(WAKE_CHANNEL, {"execution_id": execution.id})
            return None
        async with self.db.begin() as conn:
            now = execution.created_at
            if idempotency_key is not None:
                claimed = await idempotency.claim_key(
                    conn,
                    tenant_id=tenant_id,
                    key=idempotency_key,
                    request_hash=fingerprint,
                    execution_id=execution.id,
                    now=now,
                    is_postgres=not self.db.is_sqlite,
                )
                if not claimed.fresh:
                    if claimed.request_hash != fingerprint:
                        raise InvalidRequest(
                            "this Idempotency-Key was already used with a different request body",
                            code="idempotency_key_reused",
                        )
                    existing = await repos.get_execution(conn, tenant_id, claimed.execution_id)
                    if existing is None:
                        raise NotFound("the execution of this Idempotency-Key no longer exists")
                    return existing
            if execution.session_id is not None:
                interrupted = await self._session_turn(conn, tenant_id, execution, sub.on_busy)
                for ex in interrupted:
                    if cancelled := await repos.cancel_if_queued(conn, tenant_id, ex.id, now=now):
                        ended = await jobs.record_end(
                            conn, cancelled, RunOutcome.cancelled(), now=now
                        )
                        events.append((ex.id, ended))
                    else:
                        await repos.request_cancel(conn, tenant_id, ex.id, now=now)
            await repos.create_execution(conn, execution, first)  # event_seq = 1
        for execution_id, appended in events:
            await notify(self.bus, execution_id, appended)
        for ex in interrupted:
            await self.bus.publish(CANCEL_CHANNEL, {"execution_id": ex.id})
        await self.bus.publish(WAKE_CHANNEL, {"execution_id": execution.id})
        return None

    async def _session_turn(
        self, conn: Any, tenant_id: str, execution: Execution, on_busy: OnBusy
    ) -> list[Execution]:
        """Apply `on_busy` when the session already has work; returns what to interrupt."""
        assert execution.session_id is not None
        if not await session_repo.lock(conn, tenant_id, execution.session_id, execution.created_at):
            raise NotFound(f"session {execution.session_id!r} not found")
        active = await session_repo.executions_of(
            conn, tenant_id, execution.session_id, active_only=True
        )
        if not active or on_busy == "enqueue":
            return []
        if on_busy == "reject":
            busy = active[0]
            raise Conflict(
                f"session is busy with execution {busy.id} ({busy.status.value}); "
                "retry later, or submit with on_busy=enqueue or interrupt",
                execution_id=busy.id,
                status=busy.status.value,
            )
        return active

    async def submit_and_wait(
        self,
        tenant_id: str,
        sub: Submission,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
        timeout_s: float | None = None,
    ) -> Submitted:
        """Submit, then wait for the end (or the wait limit) and return the execution as it
        is then. The client going away cancels only this wait, never the execution."""
        submitted = await self.submit(
            tenant_id,
            sub,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            then_wait=timeout_s or self.settings.sync_wait_s,
        )
        execution = submitted.execution
        if not execution.status.is_final:
            execution = await self.get(tenant_id, execution.id)
        return Submitted(execution, submitted.replayed)

    async def wait(
        self,
        tenant_id: str,
        execution_id: str,
        timeout_s: float | None,
        events: asyncio.Queue[dict[str, Any]] | None = None,
    ) -> Execution | None:
        """Until the execution is final: woken by the bus, re-checking the database every
        POLL_INTERVAL_S (a lost notification only delays). With `events`, the caller
        subscribed before the execution could end, so no first check is needed. Returns
        the execution as committed when the end's notification carried it (else None: the
        caller reads it)."""
        if events is None:
            async with self.bus.subscribe(execution_channel(execution_id)) as subscribed:
                return await self._wait(tenant_id, execution_id, timeout_s, subscribed, check=True)
        return await self._wait(tenant_id, execution_id, timeout_s, events, check=False)

    async def _wait(
        self,
        tenant_id: str,
        execution_id: str,
        timeout_s: float | None,
        events: asyncio.Queue[dict[str, Any]],
        *,
        check: bool,
    ) -> Execution | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s or self.settings.sync_wait_s)
        poll_s = max(0.5, self.settings.poll_interval_s)
        while True:
            if check:
                async with self.db.connect() as conn:
                    status = await repos.get_status(conn, tenant_id, execution_id)
                if status is None or ExecutionStatus(status).is_final:
                    return None
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                message = await asyncio.wait_for(events.get(), timeout=min(poll_s, remaining))
            except TimeoutError:
                check = True
                continue
            check = not ExecutionStatus(message.get("status", "running")).is_final
            if not check:
                return ended_execution(message, tenant_id, execution_id)

    async def cancel(self, tenant_id: str, execution_id: str) -> Execution:
        """Queued → cancelled at once; running → stopped by its worker (at once when its
        code or its model call runs, else at the next step boundary); cancelled → as is;
        otherwise 409."""
        execution = await self.get(tenant_id, execution_id, with_steps=False)
        now = utcnow()
        appended: list[Event] = []
        async with self.db.begin() as conn:
            if cancelled := await repos.cancel_if_queued(conn, tenant_id, execution.id, now=now):
                appended = await jobs.record_end(conn, cancelled, RunOutcome.cancelled(), now=now)
            elif not await repos.request_cancel(conn, tenant_id, execution.id, now=now):
                current = await repos.get_status(conn, tenant_id, execution.id)
                if current is None:
                    raise NotFound(f"execution {execution_id!r} not found")
                if current != ExecutionStatus.CANCELLED.value:
                    raise Conflict(
                        f"execution {execution.id} already ended as {current}",
                        status=current,
                    )
        await notify(self.bus, execution.id, appended)
        if not appended:
            await self.bus.publish(CANCEL_CHANNEL, {"execution_id": execution.id})
            await self.wait(tenant_id, execution.id, timeout_s=5.0)
        return await self.get(tenant_id, execution.id)

    async def get(self, tenant_id: str, execution_id: str, *, with_steps: bool = True) -> Execution:
        canonical = repos.parse_id(execution_id)
        if canonical is None:
            raise NotFound(f"execution {execution_id!r} not found")
        async with self.db.connect() as conn:
            execution = await repos.get_execution(conn, tenant_id, canonical, with_steps=with_steps)
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
