"""A finished execution is freed by reference counting, not left to the garbage collector.

Whatever an execution builds (its agent and memory, the model client, the tool proxies, the
sandbox client, the step writer) that sits in a reference cycle survives the execution until
the collector's next pass over the whole heap, and that pass stops every execution of the
worker while it walks them all: under load, one full pass every few seconds of 50-100 ms.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter

import httpx

from agent_platform.queue.worker import Worker
from tests.fakes.llm_server import FakeLLMServer, Text, code, final

EXECUTE = "/api/v1/agent/execute"
OURS = ("agent_platform", "smolagents")  # an execution's objects come from these packages


async def _idle(worker: Worker) -> None:
    deadline = time.monotonic() + 10
    while worker.active and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not worker.active, "the worker did not finish its executions"


async def test_a_finished_execution_leaves_no_reference_cycles(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    """Answered; answered after an error and a tool call; refused by the provider; and a
    session's second turn (whose memory starts with the first)."""
    worker = client.app.state.platform.worker  # type: ignore[attr-defined]
    llm.script("cycles-tool", [code("1 / 0"), code("print(tenant_info())"), final("'done'")])
    llm.script("cycles-refused", [Text("unused", fail_first=[400])])
    llm.script("cycles-session", [final("'one'"), final("'two'")])
    session = (await client.post("/api/v1/sessions", json={"title": "cycles"})).json()
    turn = {"task": "cycles-session: first", "session_id": session["session_id"]}
    first = await client.post(EXECUTE, json=turn)  # also warms caches and connections
    assert first.json()["result"] == "one", first.json()
    runs = [
        ({"task": "What is 2 + 2?"}, "completed", "4"),
        ({"task": "cycles-tool"}, "completed", "done"),
        ({"task": "cycles-refused"}, "failed", None),
        ({"task": "and again", "session_id": session["session_id"]}, "completed", "two"),
    ]
    await _idle(worker)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what the collector finds, to name it
    try:
        for request, status, result in runs:
            body = (await client.post(EXECUTE, json=request)).json()
            assert (body["status"], body["result"]) == (status, result), body
        await _idle(worker)
        gc.collect()
        left = Counter(
            f"{type(o).__module__}.{type(o).__qualname__}"
            for o in gc.garbage
            if type(o).__module__.startswith(OURS)
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not left, f"objects only the collector could free: {left.most_common(10)}"
