"""The whole platform with the process sandbox: secrets stay out of reach, runaway code is
killed on time, a crashed sandbox fails only its own execution, and the worker carries on."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from agent_platform.app import create_app
from tests.conftest import make_settings
from tests.fakes.llm_server import FakeLLMServer, code, final

EXECUTE = "/api/v1/agent/execute"
CANARY = f"canary-{uuid.uuid4().hex}"


@pytest.fixture
async def sandboxed_app(
    llm: FakeLLMServer,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> AsyncIterator[FastAPI]:
    monkeypatch.setenv("AP_TEST_CANARY_SECRET", CANARY)  # in the worker's environment
    limits = {"max_execution_time": 3, "sandbox_cpu_seconds": 30}
    limits.update(getattr(request, "param", {}))
    settings = make_settings(
        llm,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'sandboxed.db'}",
        anthropic_api_key=CANARY,  # the provider key is a secret too
        **limits,
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        yield app


@pytest.fixture
async def sandboxed(sandboxed_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=sandboxed_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


def kw() -> str:
    return f"sb-{uuid.uuid4().hex[:8]}"


ESCAPES = [
    "import random\nprint('{0.__init__.__globals__[_os].environ}'.format(random.Random))",
    "print(open('/proc/self/environ').read())",
    "print(open('/proc/1/environ').read())",
    "import random\nprint(random._os.environ)",
    "print(().__class__.__base__.__subclasses__())",
]


async def test_no_secret_reaches_steps_results_or_logs(
    sandboxed: httpx.AsyncClient, llm: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    k = kw()
    llm.script(k, [*(code(src) for src in ESCAPES), final("'done'")])
    response = await sandboxed.post(EXECUTE, json={"task": k, "tools": [], "max_steps": 8})
    body = response.json()
    assert body["status"] == "completed"
    assert len([s for s in body["steps"] if s["type"] == "action"]) == len(ESCAPES) + 1
    assert "PATH" in body["steps"][0]["observation"]  # the format gadget got through...
    assert CANARY not in response.text  # ...and found nothing worth stealing
    assert CANARY not in caplog.text


async def test_runaway_code_is_killed_at_the_deadline(
    sandboxed: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    k = kw()
    llm.script(k, [code("total = 0\nfor i in range(10**12):\n    total += i")])
    started = time.monotonic()
    body = (await sandboxed.post(EXECUTE, json={"task": k, "tools": []})).json()
    elapsed = time.monotonic() - started
    assert body["status"] == "timed_out" and body["error_code"] == "timeout"
    assert elapsed < 3 + 2.5  # MAX_EXECUTION_TIME plus a small margin
    # the worker is healthy and serves the next execution
    after = (await sandboxed.post(EXECUTE, json={"task": "What is 2 + 2?", "tools": []})).json()
    assert after["status"] == "completed" and after["result"] == "4"


@pytest.mark.parametrize(
    "sandboxed_app", [{"max_execution_time": 30, "sandbox_cpu_seconds": 1}], indirect=True
)
async def test_cpu_limit_kills_only_that_execution(
    sandboxed: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    k = kw()
    llm.script(k, [code("x = 10 ** 10 ** 7\nprint(len(str(x)))"), final("'unreachable'")])
    other = kw()
    llm.script(other, [code("print(sum(range(10)))"), final("'fine'")])
    crash, fine = await asyncio.gather(
        sandboxed.post(EXECUTE, json={"task": k, "tools": []}),
        sandboxed.post(EXECUTE, json={"task": other, "tools": []}),
    )
    crashed = crash.json()
    assert crashed["status"] == "failed", crashed
    assert crashed["error_code"] == "sandbox_error" and "CPU time limit" in crashed["error"]
    assert "Traceback" not in crash.text
    assert fine.json()["status"] == "completed" and fine.json()["result"] == "fine"
    assert llm.calls(k) == 1  # the dead sandbox was not asked for more steps


async def test_the_first_model_call_does_not_wait_for_the_sandbox(
    sandboxed: httpx.AsyncClient, sandboxed_app: FastAPI, llm: FakeLLMServer
) -> None:
    """The execution asks for its sandbox and goes on to the model: the child is handed over
    while the model answers, and taken when the code runs."""
    zygote = sandboxed_app.state.platform.sandbox.zygote_pid
    k = kw()
    llm.script(k, [code("print(6 * 7)"), final("'forty-two'")])
    os.kill(zygote, signal.SIGSTOP)  # no child can be handed over until it goes on
    try:
        running = asyncio.create_task(sandboxed.post(EXECUTE, json={"task": k, "tools": []}))
        deadline = time.monotonic() + 10
        while llm.calls(k) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert llm.calls(k) == 1  # asked while no sandbox was there yet
        assert not running.done()
    finally:
        os.kill(zygote, signal.SIGCONT)
    body = (await running).json()
    assert body["status"] == "completed" and body["result"] == "forty-two", body
    assert "Execution logs:\n42\n" in body["steps"][0]["observation"]


async def test_health_reports_the_isolation_level(sandboxed: httpx.AsyncClient) -> None:
    assert (await sandboxed.get("/health")).json()["sandbox"] == "netns"
