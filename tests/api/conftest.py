"""A real HTTP server around the app (httpx's ASGI transport buffers whole responses, which
hides streaming): uvicorn in the test's event loop, on a free loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import uvicorn

from agent_platform.app import create_app
from agent_platform.config import Settings
from tests.e2e.procs import free_port


@pytest.fixture
async def server_url(settings: Settings) -> AsyncIterator[str]:
    app = create_app(settings, run_worker=True, migrate_schema=True)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(300):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, timeout=30)
