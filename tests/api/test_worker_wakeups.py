"""Queued work starts on a wake-up, never on the poll: a worker with one slot and a poll
interval longer than the test runs every execution of a backlog, one after another."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from agent_platform.config import Settings
from tests.conftest import make_settings
from tests.fakes.llm_server import FakeLLMServer, Text, code, final

EXECUTE = "/api/v1/agent/execute"
POLL_NEVER_S = 600.0


@pytest.fixture
def settings(llm: FakeLLMServer, backend: dict[str, Any]) -> Settings:
    return make_settings(
        llm, **backend, worker_concurrency=1, poll_interval_s=POLL_NEVER_S, reaper_interval_s=600
    )


async def test_a_full_worker_takes_the_backlog_as_slots_free(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    ids = []
    for i in range(3):
        kw = f"wake-{uuid.uuid4().hex[:8]}"
        llm.script(kw, [Text(code(f"x = {i}").text, delay_ms=150), final(f"'done {i}'")])
        response = await client.post(EXECUTE, json={"task": kw, "tools": [], "background": True})
        assert response.status_code == 202
        ids.append(response.json()["execution_id"])
    results = {}
    for _ in range(400):  # 20 s: far less than the poll interval
        for execution_id in ids:
            body = (await client.get(f"/api/v1/agent/execution/{execution_id}")).json()
            if body["status"] not in ("queued", "running"):
                results[execution_id] = body
        if len(results) == len(ids):
            break
        await asyncio.sleep(0.05)
    assert [results.get(i, {}).get("result") for i in ids] == ["done 0", "done 1", "done 2"]
