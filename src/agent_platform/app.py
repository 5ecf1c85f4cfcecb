"""`create_app(settings)`: the FastAPI application, its lifespan and its routers."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from agent_platform import __version__
from agent_platform.api import executions, ops, sessions, webhooks
from agent_platform.api.errors import BodySizeLimit, install_error_handlers
from agent_platform.config import Settings
from agent_platform.container import Platform

log = logging.getLogger("agent_platform")


def freeze_startup_heap() -> None:
    """Move everything loaded at startup (FastAPI, SQLAlchemy, smolagents, the SDKs: hundreds
    of thousands of objects) out of the collector's reach. Without this, each full collection
    walks them all: 200-300 ms pauses under load, which is most of the tail latency."""
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings,
    *,
    run_worker: bool | None = None,
    migrate_schema: bool | None = None,
    platform: Platform | None = None,
) -> FastAPI:
    """`run_worker`/`migrate_schema` default to on in embedded mode (SQLite, no Redis)."""
    platform = platform or Platform(settings)
    embedded = platform.mode == "embedded"
    run_worker = embedded if run_worker is None else run_worker
    migrate_schema = embedded if migrate_schema is None else migrate_schema

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await platform.start(migrate_schema=migrate_schema)
        for note in platform.providers.startup_warnings():
            log.warning(note)
        if run_worker:
            await platform.start_worker_in_background()
        freeze_startup_heap()
        try:
            yield
        finally:
            await platform.close()

    app = FastAPI(
        title="Agent Platform",
        version=__version__,
        description=(
            "Multi-tenant AI agent runtime: submit a task, a smolagents CodeAgent works on it "
            "with tools, every step is recorded. Errors are JSON: "
            '`{"error": {"code", "message"}}`.'
        ),
        lifespan=lifespan,
    )
    app.state.platform = platform
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.include_router(ops.router)
    app.include_router(executions.router)
    app.include_router(webhooks.router)
    app.include_router(sessions.router)
    return app
