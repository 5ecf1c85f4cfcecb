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
from agent_platform.runtime.agent import AUTHORIZED_IMPORTS, AgentRunner
from agent_platform.runtime.providers import Providers
from agent_platform.runtime.sandbox import SandboxLimits, SandboxPool
from agent_platform.services.executions import ExecutionService
from agent_platform.services.sessions import SessionService
from agent_platform.services.streams import ExecutionStream
from agent_platform.store import migrate
from agent_platform.store.db import Database
from agent_platform.tools.registry import ToolRegistry, default_registry

log = logging.getLogger(__name__)

SANDBOX_LEVEL_IN_PROCESS = "in-process (smolagents LocalPythonExecutor: not a boundary)"
SANDBOX_LEVEL_REMOTE = "in the worker processes (see their logs)"


class Platform:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: ToolRegistry | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.db = Database(settings.resolved_database_url, pool_size=settings.db_pool_size)
        self.bus = bus or make_bus(settings.redis_url, settings.redis_namespace)
        self.registry = registry or default_registry(settings)
        self.providers = Providers(settings)
        self.executions = ExecutionService(
            settings, self.db, self.bus, self.registry, self.providers
        )
        self.sessions = SessionService(settings, self.db, self.bus)
        self.streams = ExecutionStream(self.db, self.bus, keepalive_s=settings.sse_keepalive_s)
        self.sandbox_level = (
            SANDBOX_LEVEL_IN_PROCESS if settings.sandbox == "in-process" else SANDBOX_LEVEL_REMOTE
        )
        self.sandbox: SandboxPool | None = None
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

    async def start_sandbox(self) -> None:
        """Start the sandbox zygote (worker side); says which isolation level is active."""
        if self.settings.sandbox == "in-process":
            log.warning(
                "SANDBOX=in-process: model-written code runs inside the worker process; "
                "use it for development only"
            )
            return
        s = self.settings
        pool = SandboxPool(
            limits=SandboxLimits(
                memory_bytes=s.sandbox_memory_mb * 2**20,
                cpu_seconds=s.sandbox_cpu_seconds,
                step_timeout_s=s.sandbox_step_timeout_s,
                max_tool_calls=s.sandbox_max_tool_calls,
                max_output_bytes=s.sandbox_max_output_bytes,
            ),
            authorized_imports=AUTHORIZED_IMPORTS,
            prefork=s.sandbox_prefork,
        )
        await asyncio.to_thread(pool.start)
        self.sandbox = pool
        self.sandbox_level = pool.isolation_level
        log.info("sandbox isolation level: %s %s", pool.isolation_level, pool.isolation_details)

    def make_worker(self, *, concurrency: int | None = None) -> Worker:
        factory = None
        if self.sandbox is not None:
            pool = self.sandbox
            factory = lambda execution_id: pool.request(execution_id=execution_id)  # noqa: E731
        runner = AgentRunner(self.registry, self.providers, factory)
        self.worker = Worker(
            self.settings,
            self.db,
            self.bus,
            runner,
            tenant=self.settings.tenant,
            concurrency=concurrency,
        )
        return self.worker

    async def start_worker_in_background(self) -> None:
        await self.start_sandbox()
        worker = self.make_worker()
        self._worker_task = asyncio.create_task(worker.run(), name="embedded-worker")

    async def close(self, *, grace_s: float = 10.0) -> None:
        if self.worker is not None:
            await self.worker.stop(grace_s=grace_s)
        if self._worker_task is not None:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker_task
        if self.sandbox is not None:
            await asyncio.to_thread(self.sandbox.stop)
        await asyncio.to_thread(self.providers.close)  # waits for the provider loop's thread
        await self.bus.close()
        await self.db.dispose()
