"""The seed's endpoints and the execute contract, on embedded SQLite and on PostgreSQL + Redis.

The model is the fake provider on loopback, reached through the real anthropic SDK."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from agent_platform.store import repos
from tests.fakes.llm_server import FakeLLMServer, Text, code, count_tokens, final

EXECUTE = "/api/v1/agent/execute"


def keyword() -> str:
    return f"kw-{uuid.uuid4().hex[:10]}"


async def test_health_and_tenant_info(client: httpx.AsyncClient) -> None:
    health = (await client.get("/health")).json()
    assert health["status"] == "healthy"
    assert health["database"] == "healthy"
    assert health["providers"] == ["anthropic"]
    assert health["sandbox"] == "netns"  # a private network namespace per execution
    info = (await client.get("/api/v1/tenant/info")).json()
    assert info["tenant_id"] == "tenant-test"
    assert info["tenant_email"] == "test@example.com"
    assert (await client.get("/livez")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_seed_example_waits_and_returns_real_steps(client: httpx.AsyncClient) -> None:
    response = await client.post(EXECUTE, json={"task": "What is 2 + 2? Just give me the number."})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "completed"
    assert body["result"] == "4"
    assert body["error"] is None
    assert body["stop_reason"] == "final_answer"
    assert body["completed_at"] and body["created_at"]
    steps = body["steps"]
    assert [s["type"] for s in steps] == ["action", "action", "final_answer"]
    first = steps[0]
    assert first["step"] == 1
    assert first["action"] == "result = 2 + 2\nprint(result)"
    assert "4" in first["observation"]
    assert first["thought"] == "I will compute it."
    assert first["usage"]["input_tokens"] > 0 and first["usage"]["output_tokens"] > 0
    assert first["duration_ms"] >= 0 and first["started_at"]
    assert steps[-1]["final_answer"] == "4" and steps[-1]["action"] == "final_answer"
    assert body["usage"]["input_tokens"] == sum(s["usage"]["input_tokens"] for s in steps)
    assert body["usage"]["output_tokens"] == sum(s["usage"]["output_tokens"] for s in steps)
    # the GET returns the same execution
    again = (await client.get(f"/api/v1/agent/execution/{body['execution_id']}")).json()
    assert again["steps"] == steps and again["result"] == "4"


async def test_a_waiting_request_answers_what_get_reads(
    client: httpx.AsyncClient,
    llm: FakeLLMServer,
    backend: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever the run did, a waiting request answers the execution as GET reads it. On
    PostgreSQL + Redis the end's notification carries it and nothing is read back, unless
    it is too large to carry."""
    reads: list[str] = []
    read = repos.get_execution

    async def noted(conn: Any, tenant_id: str, execution_id: str, **kw: Any) -> Any:
        reads.append(execution_id)
        return await read(conn, tenant_id, execution_id, **kw)

    monkeypatch.setattr(repos, "get_execution", noted)
    carried = "redis_url" in backend
    big = code(f"s = '{'x' * 40_000}'")  # two such steps, as stored: over 64 KB
    scripts = {
        "a tool call": [code("info = tenant_info()\nprint(info)"), final("info[:40]")],
        "an error fed back": [code("print(1 / 0)"), code("y = 5\nprint(y)"), final("y * 2")],
        "max steps": [code("print('still working')")],
        "retries": [Text(code("print(1)").text, fail_first=[529], retry_after=0.01), final("1")],
        "no ascii": [code("print('ünïcödé ✓ 🚀')"), final("'✓'")],
        "too large to carry": [big, big, final("'big'")],
    }
    for name, script in scripts.items():
        kw = keyword()
        llm.script(kw, script)
        reads.clear()
        answer = (await client.post(EXECUTE, json={"task": kw, "max_steps": 2})).json()
        read_back = bool(reads)
        again = (await client.get(f"/api/v1/agent/execution/{answer['execution_id']}")).json()
        assert answer == again, name
        assert answer["status"] == "completed" and answer["steps"], name
        assert read_back == (not carried or name == "too large to carry"), name


async def test_usage_matches_the_provider(client: httpx.AsyncClient, llm: FakeLLMServer) -> None:
    kw = keyword()
    llm.script(kw, [code("x = 21 * 2\nprint(x)"), final("x")])
    body = (await client.post(EXECUTE, json={"task": f"{kw} compute", "tools": []})).json()
    assert body["result"] == "42"
    served = [r for r in llm.requests if r.keyword == kw and r.status == 200]
    assert len(served) == 2
    assert body["usage"]["input_tokens"] == sum(r.input_tokens for r in served)
    assert body["usage"]["output_tokens"] == sum(r.output_tokens for r in served)
    assert served[0].output_tokens == count_tokens(
        body["steps"][0]["model_output"][: -len("</code>")]
    )


async def test_tools_run_on_the_worker_and_are_recorded(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    kw = keyword()
    llm.script(kw, [code("info = tenant_info()\nprint(info)"), final("'tenant: ' + info[:80]")])
    body = (await client.post(EXECUTE, json={"task": f"{kw} who am I?"})).json()
    assert body["status"] == "completed"
    assert "tenant-test" in body["result"]
    calls = body["steps"][0]["tool_calls"]
    assert [c["name"] for c in calls] == ["tenant_info"]
    assert "tenant-test" in calls[0]["result"]
    assert "Test User" in body["steps"][0]["observation"]


async def test_disabled_tool_is_not_callable(client: httpx.AsyncClient, llm: FakeLLMServer) -> None:
    kw = keyword()
    llm.script(kw, [code("print(tenant_info())"), final("'gave up'")])
    body = (await client.post(EXECUTE, json={"task": kw, "tools": ["web_search"]})).json()
    assert body["status"] == "completed"
    assert body["steps"][0]["error"] and "tenant_info" in body["steps"][0]["error"]
    assert body["steps"][0]["tool_calls"] == []


async def test_python_error_is_fed_back_and_recovered(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    kw = keyword()
    llm.script(kw, [code("print(1 / 0)"), code("y = 5\nprint(y)"), final("y * 2")])
    body = (await client.post(EXECUTE, json={"task": kw, "tools": []})).json()
    assert body["status"] == "completed" and body["result"] == "10"
    assert "division by zero" in body["steps"][0]["error"]
    assert body["steps"][1]["error"] is None
    second_call = [r for r in llm.requests if r.keyword == kw][1]
    assert "division by zero" in str(second_call.body)


async def test_max_steps_completes_with_stop_reason(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    kw = keyword()
    llm.script(kw, [code("print('still working')")])
    body = (await client.post(EXECUTE, json={"task": kw, "tools": [], "max_steps": 3})).json()
    assert body["status"] == "completed"
    assert body["stop_reason"] == "max_steps"
    actions = [s for s in body["steps"] if s["type"] == "action"]
    assert len(actions) == 4  # three steps, then the forced final-answer call
    assert "max steps" in actions[-1]["error"].lower()
    assert llm.calls(kw) == 4


async def test_provider_overloaded_then_success_records_retries(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    kw = keyword()
    llm.script(
        kw, [Text(code("print(1)").text, fail_first=[529, 500], retry_after=0.01), final("'ok'")]
    )
    body = (await client.post(EXECUTE, json={"task": kw, "tools": []})).json()
    assert body["status"] == "completed" and body["result"] == "ok"
    assert body["steps"][0]["retries"] == 2
    assert llm.calls(kw) == 4


async def test_provider_401_fails_with_its_reason(
    llm: FakeLLMServer, backend: dict[str, object]
) -> None:
    from asgi_lifespan import LifespanManager

    from agent_platform.app import create_app
    from tests.conftest import make_settings

    settings = make_settings(llm, anthropic_api_key="bad-key", **backend)
    app = create_app(settings, run_worker=True, migrate_schema=True)
    async with LifespanManager(app, startup_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            kw = keyword()
            llm.script(kw, [final("'unreachable'")])
            body = (await c.post(EXECUTE, json={"task": kw, "tools": []})).json()
    assert body["status"] == "failed"
    assert body["error_code"] == "provider_error"
    assert "401" in body["error"] and "invalid x-api-key" in body["error"]
    assert "Traceback" not in body["error"]
    assert llm.calls(kw) == 1  # not retried


async def test_background_answers_202_and_can_be_polled(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    kw = keyword()
    llm.script(kw, [Text(code("print(1)").text, delay_ms=300), final("'done'")])
    response = await client.post(EXECUTE, json={"task": kw, "tools": [], "background": True})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    location = response.headers["location"]
    assert location == f"/api/v1/agent/execution/{body['execution_id']}"
    for _ in range(100):
        polled = (await client.get(location)).json()
        if polled["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert polled["status"] == "completed" and polled["result"] == "done"


async def test_list_is_newest_first_with_total_and_status_filter(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    ids = []
    for _ in range(3):
        body = (await client.post(EXECUTE, json={"task": "What is 2 + 2?", "tools": []})).json()
        ids.append(body["execution_id"])
    page = (await client.get("/api/v1/agent/executions?limit=2")).json()
    assert page["total"] == 3 and page["limit"] == 2
    assert [e["execution_id"] for e in page["executions"]] == ids[::-1][:2]
    assert page["executions"][0]["steps"] is None
    rest = (await client.get("/api/v1/agent/executions?limit=2&offset=2")).json()
    assert [e["execution_id"] for e in rest["executions"]] == [ids[0]]
    beyond = (await client.get("/api/v1/agent/executions?limit=2&offset=10")).json()
    assert beyond["executions"] == [] and beyond["total"] == 3  # the total past the last page
    with_steps = (await client.get("/api/v1/agent/executions?limit=1&include_steps=true")).json()
    assert len(with_steps["executions"][0]["steps"]) == 3
    done = (await client.get("/api/v1/agent/executions?status=completed")).json()
    assert done["total"] == 3
    assert (await client.get("/api/v1/agent/executions?status=failed")).json()["total"] == 0
    capped = (await client.get("/api/v1/agent/executions?limit=1000")).json()
    assert capped["limit"] == 100


async def test_tools_catalogue(client: httpx.AsyncClient) -> None:
    tools = (await client.get("/api/v1/agent/tools")).json()["tools"]
    assert [t["name"] for t in tools] == ["tenant_info", "web_search", "visit_webpage"]
    visit = tools[2]
    assert "url" in visit["inputs"] and visit["description"]


async def test_tools_subset_and_none_reach_the_agent(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    kw = keyword()
    llm.script(kw, [final("'ok'")])
    await client.post(EXECUTE, json={"task": f"{kw} a", "tools": ["web_search", "visit_webpage"]})
    await client.post(EXECUTE, json={"task": f"{kw} b", "tools": []})
    await client.post(EXECUTE, json={"task": f"{kw} c"})
    prompts = {}
    for r in llm.requests:
        if r.keyword == kw and r.index == 0 and r.body:
            task = r.body["messages"][0]["content"]
            prompts[task.strip()[-1]] = r.body["system"]
    assert "def web_search" in prompts["a"] and "def tenant_info" not in prompts["a"]
    assert "def web_search" not in prompts["b"] and "def tenant_info" not in prompts["b"]
    assert all(f"def {t}" in prompts["c"] for t in ("tenant_info", "web_search", "visit_webpage"))
