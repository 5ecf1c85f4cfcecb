"""Multi-turn sessions on SQLite and PostgreSQL + Redis: memory across turns, one execution
at a time with each `on_busy` mode, and deletion."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from tests.fakes.llm_server import FakeLLMServer, Text, code, final

EXECUTE = "/api/v1/agent/execute"


async def new_session(client: httpx.AsyncClient, title: str = "chat") -> str:
    response = await client.post("/api/v1/sessions", json={"title": title})
    assert response.status_code == 201
    assert response.headers["location"].endswith(response.json()["session_id"])
    return str(response.json()["session_id"])


async def wait_final(client: httpx.AsyncClient, execution_id: str) -> dict:
    for _ in range(200):
        body = (await client.get(f"/api/v1/agent/execution/{execution_id}")).json()
        if body["status"] not in ("queued", "running"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("execution did not end")


async def test_three_turns_see_each_other(client: httpx.AsyncClient, llm: FakeLLMServer) -> None:
    kw = f"sess-{uuid.uuid4().hex[:8]}"
    # The fake picks its script from the session's first task and its reply from the number
    # of assistant turns so far, so one script spans the conversation.
    llm.script(kw, [final("'Paris'"), final("'about 2.1 million'"), final("'Paris, 2.1 million'")])
    session_id = await new_session(client)
    turns = [
        f"{kw}: what is the capital of France?",
        "And how many people live there?",
        "Summarise your two previous answers in one line.",
    ]
    results = []
    for task in turns:
        body = {"task": task, "tools": [], "session_id": session_id}
        answer = (await client.post(EXECUTE, json=body)).json()
        assert answer["status"] == "completed" and answer["session_id"] == session_id
        results.append(answer["result"])
    assert results == ["Paris", "about 2.1 million", "Paris, 2.1 million"]
    third = [r for r in llm.requests if r.keyword == kw][-1].body
    seen = json.dumps(third["messages"])
    assert turns[0] in seen and turns[1] in seen and turns[2] in seen  # earlier tasks
    assert "Paris" in seen and "about 2.1 million" in seen  # and their answers
    detail = (await client.get(f"/api/v1/sessions/{session_id}")).json()
    assert [e["task"] for e in detail["executions"]] == turns
    listed = (await client.get("/api/v1/sessions")).json()
    assert listed["total"] == 1 and listed["sessions"][0]["session_id"] == session_id
    tagged = (
        await client.post("/api/v1/sessions", json={"title": "t", "metadata": {"team": "ops"}})
    ).json()
    newest = (await client.get("/api/v1/sessions?limit=1")).json()
    assert newest["total"] == 2 and newest["sessions"][0]["session_id"] == tagged["session_id"]
    assert newest["sessions"][0]["metadata"] == {"team": "ops"}
    beyond = (await client.get("/api/v1/sessions?offset=5")).json()
    assert beyond["sessions"] == [] and beyond["total"] == 2  # the total past the last page


async def test_busy_session_modes(client: httpx.AsyncClient, llm: FakeLLMServer) -> None:
    kw = f"busy-{uuid.uuid4().hex[:8]}"
    slow = Text(code("print('working')").text, delay_ms=700)
    llm.script(kw, [slow, final("'first'"), final("'second'"), final("'third'")])
    session_id = await new_session(client)
    first = (
        await client.post(
            EXECUTE,
            json={"task": f"{kw} one", "tools": [], "session_id": session_id, "background": True},
        )
    ).json()["execution_id"]
    # enqueue (default): runs after the first one and sees its answer
    queued = (
        await client.post(
            EXECUTE,
            json={"task": "two", "tools": [], "session_id": session_id, "background": True},
        )
    ).json()["execution_id"]
    # reject: 409 naming the running execution
    rejected = await client.post(
        EXECUTE,
        json={"task": "nope", "tools": [], "session_id": session_id, "on_busy": "reject"},
    )
    assert rejected.status_code == 409
    assert rejected.json()["error"]["details"]["execution_id"] in (first, queued)
    first_done, second_done = await wait_final(client, first), await wait_final(client, queued)
    assert first_done["result"] == "first" and second_done["result"] == "second"
    assert second_done["started_at"] >= first_done["completed_at"]  # one at a time, in order
    second_request = [r for r in llm.requests if r.keyword == kw and r.index == 2][-1]
    assert "first" in json.dumps(second_request.body["messages"])


async def test_interrupt_cancels_the_running_one(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    kw = f"intr-{uuid.uuid4().hex[:8]}"
    llm.script(kw, [Text(code("print('long')").text, delay_ms=400)] * 8 + [final("'late'")])
    session_id = await new_session(client)
    body = {"task": f"{kw} long", "tools": [], "session_id": session_id, "background": True}
    running = (await client.post(EXECUTE, json=body)).json()["execution_id"]
    for _ in range(100):
        if llm.calls(kw) >= 1:
            break
        await asyncio.sleep(0.05)
    other = f"intr2-{uuid.uuid4().hex[:8]}"
    llm.script(other, [final("'interrupting'")])
    response = await client.post(
        EXECUTE,
        json={"task": other, "tools": [], "session_id": session_id, "on_busy": "interrupt"},
    )
    assert response.json()["status"] == "completed"
    assert (await wait_final(client, running))["status"] == "cancelled"


async def test_delete_session_and_unknown_sessions(client: httpx.AsyncClient) -> None:
    session_id = await new_session(client)
    done = (
        await client.post(
            EXECUTE, json={"task": "What is 2 + 2?", "tools": [], "session_id": session_id}
        )
    ).json()
    assert (await client.delete(f"/api/v1/sessions/{session_id}")).status_code == 204
    assert (await client.get(f"/api/v1/sessions/{session_id}")).status_code == 404
    assert (await client.get(f"/api/v1/agent/execution/{done['execution_id']}")).status_code == 404
    assert (await client.delete(f"/api/v1/sessions/{session_id}")).status_code == 404
    unknown = await client.post(
        EXECUTE, json={"task": "x", "tools": [], "session_id": str(uuid.uuid4())}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert (await client.get("/api/v1/sessions/not-a-uuid")).status_code == 404
