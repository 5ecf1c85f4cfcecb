"""Builds and owns the long-lived parts (database, bus, tools, providers, services, worker),
so the api process, the worker process and embedded mode assemble them the same way."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agent_platform.config import Settings
from agent_platform.errors import ServiceUnavailable
from agent_platform.events import EventBus, make_bus
from agent_platform.queue.worker import Worker
from agent_platform.runtime.agent import AgentRunner
from agent_platform.runtime.providers import Providers
from agent_platform.services.executions import ExecutionService
from agent_platform.store import migrate
from agent_platform.store.db import Database
from agent_platform.tools.registry import ToolRegistry, default_registry

log = logging.getLogger(__name__)

SANDBOX_LEVEL_IN_PROCESS = "in-process (smolagents LocalPythonExecutor)"


class Platform:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: ToolRegistry | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.db = Database(
            settings.resolved_database_url, pool_size=max(10, settings.worker_concurrency)
        )
        self.bus = bus or make_bus(settings.redis_url, settings.redis_namespace)
        self.registry = registry or default_registry(settings)
        self.providers = Providers(settings)
        self.executions = ExecutionService(
            settings, self.db, self.bus, self.registry, self.providers
        )
        self.sandbox_level = SANDBOX_LEVEL_IN_PROCESS
        self.worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        return "embedded" if self.db.is_sqlite and not self.settings.redis_url else "server"

    async def start(self, *, migrate_schema: bool) -> None:
        if migrate_schema:
            await migrate.upgrade(self.db)
        else:
            await self.check_schema()
        await self.bus.start()

    async def check_schema(self) -> None:
        head = migrate.head_revision(self.db.url)
        try:
            current = await migrate.current_revision(self.db)
        except Exception as exc:
            raise ServiceUnavailable(f"cannot reach the database: {exc}") from exc
        if current != head:
            raise ServiceUnavailable(
                f"the database schema is at {current or 'nothing'}, this version needs {head}: "
                "run `agent-platform migrate` first"
            )

    def make_worker(self, *, concurrency: int | None = None) -> Worker:
        runner = AgentRunner(self.registry, self.providers)
        self.worker = Worker(
            self.settings,
            self.db,
            self.bus,
            runner,
            tenant=self.settings.tenant,
            concurrency=concurrency,
        )
        return self.worker

    def start_worker_in_background(self) -> None:
        worker = self.make_worker()
        self._worker_task = asyncio.create_task(worker.run(), name="embedded-worker")

    async def close(self, *, grace_s: float = 10.0) -> None:
        if self.worker is not None:
            await self.worker.stop(grace_s=grace_s)
        if self._worker_task is not None:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker_task
        await self.bus.close()
        await self.db.dispose()
