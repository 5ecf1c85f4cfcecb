"""Live executions over real HTTP, on SQLite and on PostgreSQL + Redis: SSE with replay and
resume, cancel, timeouts, idempotent submits."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx

from tests.fakes.llm_server import FakeLLMServer, Hang, Text, code, final

EXECUTE = "/api/v1/agent/execute"


def keyword() -> str:
    return f"live-{uuid.uuid4().hex[:10]}"


async def read_sse(response: httpx.Response, until: str = "done") -> list[dict[str, Any]]:
    """Parse events as they arrive, stamping each with its arrival time (wall clock, as the
    fake provider stamps the requests it receives)."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if current:
                current["at"] = time.time()
                current["data"] = json.loads(current.get("data", "null"))
                events.append(current)
                if current.get("event") == until:
                    return events
                current = {}
            continue
        field, _, value = line.partition(": ")
        current[field] = value
    return events


def five_steps(kw: str, delay_ms: int = 250) -> list[Text]:
    steps = [Text(code(f"s{i} = {i}\nprint(s{i})").text, delay_ms=delay_ms) for i in range(4)]
    return [*steps, Text(final("s0 + s1 + s2 + s3").text, delay_ms=delay_ms)]


async def test_stream_delivers_each_step_as_it_happens(server_url: str, llm: FakeLLMServer) -> None:
    kw = keyword()
    llm.script(kw, five_steps(kw))
    async with (
        httpx.AsyncClient(base_url=server_url, timeout=30) as http,
        http.stream("POST", EXECUTE, json={"task": kw, "tools": [], "stream": True}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await read_sse(response)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "execution" and kinds[-1] == "done"
    assert kinds.count("step") == 6  # five actions and the final answer
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))  # per-execution sequence numbers, no gaps
    steps = [e for e in events if e["event"] == "step"]
    assert [s["data"]["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    # each step reached the client before the next one existed: before the provider could
    # answer the model call it comes from (the call's arrival + its 250 ms), whatever pauses
    # the machine took in between
    calls = sorted((r for r in llm.requests if r.keyword == kw), key=lambda r: r.index)
    assert [c.index for c in calls] == [0, 1, 2, 3, 4]
    for step, next_call in zip(steps[:4], calls[1:], strict=True):
        assert step["at"] < next_call.timestamp + 0.25, (step["data"]["step"], next_call.index)
    assert events[-1]["data"]["status"] == "completed" and events[-1]["data"]["result"] == "6"
    assert len(events[-1]["data"]["steps"]) == 6
    # each `step` event is the step as the execution shows it (its code, observation, tokens)
    assert [s["data"] for s in steps] == events[-1]["data"]["steps"]
    assert "s2 = 2" in steps[2]["data"]["code"] and steps[2]["data"]["usage"]["input_tokens"] > 0
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["running", "completed"]


async def test_reconnect_with_last_event_id_resumes_exactly(
    server_url: str, llm: FakeLLMServer
) -> None:
    kw = keyword()
    llm.script(kw, five_steps(kw, delay_ms=200))
    async with httpx.AsyncClient(base_url=server_url, timeout=30) as http:
        created = await http.post(EXECUTE, json={"task": kw, "tools": [], "background": True})
        execution_id = created.json()["execution_id"]
        url = f"/api/v1/agent/execution/{execution_id}/events"
        async with http.stream("GET", url) as response:
            first = await read_sse(response, until="step")  # drop the connection mid-way
        last_id = first[-1]["id"]
        async with http.stream("GET", url, headers={"Last-Event-ID": last_id}) as response:
            rest = await read_sse(response)
        # a finished execution replays in full, and starting_after works without headers
        async with http.stream("GET", url) as response:
            replay = await read_sse(response)
        async with http.stream("GET", f"{url}?starting_after=2") as response:
            tail = await read_sse(response)
        bad = await http.get(url, headers={"Last-Event-ID": "soon"})
    seen = [int(e["id"]) for e in first + rest]
    assert seen == list(range(1, len(seen) + 1))  # no gap, no duplicate
    assert [e["id"] for e in replay] == [str(i) for i in seen]
    assert [e["data"] for e in replay[:-1]] == [e["data"] for e in (first + rest)[:-1]]
    assert [int(e["id"]) for e in tail] == seen[2:]
    assert bad.status_code == 422


async def test_events_of_unknown_execution_is_404(server_url: str) -> None:
    async with httpx.AsyncClient(base_url=server_url) as http:
        response = await http.get(f"/api/v1/agent/execution/{uuid.uuid4()}/events")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_cancel_running_stops_provider_calls(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    kw = keyword()
    llm.script(kw, [Text(code(f"print({i})").text, delay_ms=300) for i in range(20)])
    body = {"task": kw, "tools": [], "background": True, "max_steps": 20}
    execution_id = (await client.post(EXECUTE, json=body)).json()["execution_id"]
    for _ in range(100):
        if llm.calls(kw) >= 2:
            break
        await asyncio.sleep(0.05)
    response = await client.post(f"/api/v1/agent/execution/{execution_id}/cancel")
    assert response.status_code == 200
    cancelled = response.json()
    assert cancelled["status"] == "cancelled" and cancelled["error_code"] == "cancelled"
    calls = llm.calls(kw)
    await asyncio.sleep(1.0)
    assert llm.calls(kw) == calls  # no provider call after the cancel
    assert calls < 6
    again = await client.post(f"/api/v1/agent/execution/{execution_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"  # idempotent


async def test_cancel_ends_a_model_call_in_flight(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    """The provider call a cancel interrupts is dropped at once (its connection closed), not
    left to run until the provider answers or the execution's deadline."""
    kw = keyword()
    llm.script(kw, [Hang(30)])
    body = {"task": kw, "tools": [], "background": True}
    execution_id = (await client.post(EXECUTE, json=body)).json()["execution_id"]
    for _ in range(200):
        if llm.calls(kw) == 1 and llm.calls_in_progress:
            break
        await asyncio.sleep(0.02)
    assert llm.calls_in_progress == 1
    response = await client.post(f"/api/v1/agent/execution/{execution_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    for _ in range(100):
        if not llm.calls_in_progress:
            break
        await asyncio.sleep(0.02)
    assert llm.calls_in_progress == 0
    assert llm.calls(kw) == 1


async def test_cancel_finished_is_409(client: httpx.AsyncClient) -> None:
    done = (await client.post(EXECUTE, json={"task": "What is 2 + 2?", "tools": []})).json()
    response = await client.post(f"/api/v1/agent/execution/{done['execution_id']}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["details"]["status"] == "completed"
    missing = await client.post(f"/api/v1/agent/execution/{uuid.uuid4()}/cancel")
    assert missing.status_code == 404


async def test_timeout_of_stuck_code_and_hanging_provider(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    stuck, hang = keyword(), keyword()
    llm.script(stuck, [code("n = 0\nwhile True:\n    n = (n + 1) % 7")])
    llm.script(hang, [Hang(30)])
    started = time.monotonic()
    results = await asyncio.gather(
        client.post(EXECUTE, json={"task": stuck, "tools": [], "timeout_seconds": 2}),
        client.post(EXECUTE, json={"task": hang, "tools": [], "timeout_seconds": 2}),
    )
    elapsed = time.monotonic() - started
    for response in results:
        body = response.json()
        assert body["status"] == "timed_out", body
        assert body["timeout_seconds"] == 2
    assert elapsed < 2 + 3  # the limit plus a small margin
    after = (await client.post(EXECUTE, json={"task": "What is 2 + 2?", "tools": []})).json()
    assert after["status"] == "completed"  # the worker keeps serving
    too_long = await client.post(EXECUTE, json={"task": "x", "timeout_seconds": 10_000})
    assert too_long.status_code == 422


async def test_idempotent_submits_run_once(client: httpx.AsyncClient, llm: FakeLLMServer) -> None:
    kw = keyword()
    llm.script(kw, [Text(code("print(1)").text, delay_ms=200), final("'once'")])
    body = {"task": kw, "tools": [], "background": True}
    headers = {"Idempotency-Key": f"key-{kw}"}
    responses = await asyncio.gather(
        *(client.post(EXECUTE, json=body, headers=headers) for _ in range(20))
    )
    ids = {r.json()["execution_id"] for r in responses}
    assert len(ids) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 19
    waited = await client.post(EXECUTE, json={**body, "background": False}, headers=headers)
    assert waited.status_code == 422  # same key, different body
    assert waited.json()["error"]["details"]["code"] == "idempotency_key_reused"
    for _ in range(100):
        status = (await client.get(f"/api/v1/agent/execution/{ids.pop()}")).json()
        ids.add(status["execution_id"])
        if status["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert llm.calls(kw) == 2  # one run: two model calls
    listed = (await client.get("/api/v1/agent/executions")).json()
    assert listed["total"] == 1


async def test_cancel_queued_is_immediate(llm: FakeLLMServer, settings: Any) -> None:
    from asgi_lifespan import LifespanManager

    from agent_platform.app import create_app

    app = create_app(settings, run_worker=False, migrate_schema=True)  # nobody will claim it
    async with LifespanManager(app, startup_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"task": "What is 2 + 2?", "tools": [], "background": True}
            queued = (await client.post(EXECUTE, json=body)).json()
            assert queued["status"] == "queued"
            started = time.monotonic()
            response = await client.post(f"/api/v1/agent/execution/{queued['execution_id']}/cancel")
            assert time.monotonic() - started < 1.0
            assert response.status_code == 200 and response.json()["status"] == "cancelled"
            assert response.json()["completed_at"] is not None
