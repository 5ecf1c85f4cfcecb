"""Server-sent events for one execution: replay from the event log, then follow live.

Event ids are the execution's event sequence numbers. A reader sends everything after the
id it was given (`Last-Event-ID` / `starting_after`) from the database, then waits on the
execution's live stream (Redis Streams, or in memory) and reads the database again on every
wake-up — so there are no gaps and no duplicates, whichever replica the client lands on, and
a lost notification only delays an event until the next keep-alive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from agent_platform.domain import Execution, StoredStep, execution_channel
from agent_platform.events import EventBus
from agent_platform.store import event_log, repos
from agent_platform.store.db import Database
from agent_platform.store.event_log import Event, EventType

KEEPALIVE = ": keep-alive\n\n"


def sse(event_id: int, event_type: str, data: Any) -> str:
    return f"id: {event_id}\nevent: {event_type}\ndata: {orjson.dumps(data).decode()}\n\n"


@dataclass(frozen=True)
class Renderers:
    """How the caller (the API) shows a step and a finished execution; `step` and `done`
    events carry them as their data."""

    step: Callable[[StoredStep], dict[str, Any]]
    execution: Callable[[Execution], dict[str, Any]]


class ExecutionStream:
    def __init__(self, db: Database, bus: EventBus, *, keepalive_s: float = 15.0) -> None:
        self.db = db
        self.bus = bus
        self.keepalive_s = keepalive_s

    async def follow(
        self, tenant_id: str, execution_id: str, render: Renderers, after_seq: int = 0
    ) -> AsyncIterator[str]:
        """SSE text chunks until the `done` event (or the client goes away)."""
        channel = execution_channel(execution_id)
        cursor = await self.bus.tail(channel)  # before reading the log: nothing can slip by
        sent = after_seq
        while True:
            async with self.db.connect() as conn:
                pending = await event_log.after(conn, tenant_id, execution_id, sent)
                chunks = await self._render(conn, tenant_id, execution_id, pending, render)
            # what one read found goes out in one write (the end's several events, say)
            batch: list[str] = []
            for event, chunk in zip(pending, chunks, strict=True):
                batch.append(chunk)
                sent = event.seq
                if event.type is EventType.DONE:
                    yield "".join(batch)
                    return
            if batch:
                yield "".join(batch)
            cursor, woken = await self.bus.read(channel, cursor, self.keepalive_s)
            if not woken:
                yield KEEPALIVE

    async def _render(
        self,
        conn: Any,
        tenant_id: str,
        execution_id: str,
        pending: list[Event],
        render: Renderers,
    ) -> list[str]:
        if not pending:
            return []
        wanted = {(e.data["step"], e.data["attempt"]) for e in pending if e.type is EventType.STEP}
        steps = await repos.steps_by_key(conn, tenant_id, execution_id, wanted)
        chunks = []
        for event in pending:
            data: Any = event.data
            if event.type is EventType.STEP:
                step = steps.get((event.data["step"], event.data["attempt"]))
                data = render.step(step) if step is not None else event.data
            elif event.type is EventType.DONE:
                execution = await repos.get_execution(conn, tenant_id, execution_id)
                data = render.execution(execution) if execution else event.data
            chunks.append(sse(event.seq, event.type.value, data))
        return chunks
