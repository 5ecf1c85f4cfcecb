"""Every bad input gets its status and a JSON error body; nothing leaks a stack trace."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from agent_platform.app import create_app
from tests.conftest import make_settings
from tests.fakes.llm_server import FakeLLMServer

EXECUTE = "/api/v1/agent/execute"


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    assert "Traceback" not in response.text
    return body["error"]


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        EXECUTE, content=b'{"task": "x",', headers={"content-type": "application/json"}
    )
    assert error_of(response, 400)["code"] == "malformed_json"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "task"),
        ({"task": ""}, "task"),
        ({"task": 5}, "task"),
        ({"task": "x", "max_steps": 0}, "max_steps"),
        ({"task": "x", "max_steps": "many"}, "max_steps"),
        ({"task": "x", "tools": "web_search"}, "tools"),
        ({"task": "x", "metadata": [1, 2]}, "metadata"),
        ({"task": "x", "unknown_field": 1}, "unknown_field"),
    ],
)
async def test_schema_errors_name_the_field(
    client: httpx.AsyncClient, payload: dict[str, Any], field: str
) -> None:
    error = error_of(await client.post(EXECUTE, json=payload), 422)
    assert error["code"] == "validation_error"
    assert any(f["field"] == field for f in error["fields"]), error


async def test_unknown_tool_lists_the_valid_ones(client: httpx.AsyncClient) -> None:
    error = error_of(
        await client.post(EXECUTE, json={"task": "x", "tools": ["get_tenant_info"]}), 422
    )
    assert "get_tenant_info" in error["message"]
    assert error["details"]["valid"] == ["tenant_info", "web_search", "visit_webpage"]


async def test_limits_from_settings(client: httpx.AsyncClient) -> None:
    assert (
        "between 1 and 50"
        in error_of(await client.post(EXECUTE, json={"task": "x", "max_steps": 51}), 422)["message"]
    )
    assert (
        error_of(await client.post(EXECUTE, json={"task": "   "}), 422)["details"]["field"]
        == "task"
    )
    too_long = error_of(await client.post(EXECUTE, json={"task": "x" * 32_001}), 422)
    assert "too long" in too_long["message"]
    big_meta = error_of(
        await client.post(EXECUTE, json={"task": "x", "metadata": {"k": "v" * 9000}}), 422
    )
    assert "metadata" in big_meta["message"]
    model = error_of(await client.post(EXECUTE, json={"task": "x", "model": "gpt-9"}), 422)
    assert "claude-sonnet-5-5" in model["message"]
    # nothing was stored for any of these
    assert (await client.get("/api/v1/agent/executions")).json()["total"] == 0


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    body = b'{"task": "' + b"x" * 1_100_000 + b'"}'
    response = await client.post(
        EXECUTE, content=body, headers={"content-type": "application/json"}
    )
    assert error_of(response, 413)["code"] == "payload_too_large"

    async def chunks():  # no Content-Length: counted while streaming
        for _ in range(20):
            yield b"x" * 100_000

    response = await client.post(
        EXECUTE, content=chunks(), headers={"content-type": "application/json"}
    )
    assert error_of(response, 413)["code"] == "payload_too_large"


@pytest.mark.parametrize("execution_id", ["not-a-uuid", str(uuid.uuid4()), "1' OR '1'='1"])
async def test_unknown_execution_is_404(client: httpx.AsyncClient, execution_id: str) -> None:
    error = error_of(await client.get(f"/api/v1/agent/execution/{execution_id}"), 404)
    assert error["code"] == "not_found"


async def test_list_parameters_are_validated(client: httpx.AsyncClient) -> None:
    assert error_of(await client.get("/api/v1/agent/executions?limit=0"), 422)["fields"]
    assert error_of(await client.get("/api/v1/agent/executions?offset=-1"), 422)["fields"]
    assert error_of(await client.get("/api/v1/agent/executions?status=done"), 422)["fields"]


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    assert error_of(await client.get("/api/v1/nope"), 404)["code"] == "not_found"
    assert error_of(await client.get(EXECUTE), 405)["code"] == "method_not_allowed"


async def test_no_provider_configured_is_a_clear_503(tmp_path: Any, llm: FakeLLMServer) -> None:
    settings = make_settings(
        llm, anthropic_api_key=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db"
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            error = error_of(await c.post(EXECUTE, json={"task": "What is 2 + 2?"}), 503)
            assert error["code"] == "provider_not_configured"
            assert "ANTHROPIC_API_KEY" in error["message"] and "OPENAI_BASE_URL" in error["message"]
            assert (await c.get("/health")).json()["providers"] == []


async def test_database_down_is_503_on_writes_and_readiness(
    llm: FakeLLMServer, pg_database: str
) -> None:
    from tests.conftest import _admin as admin

    settings = make_settings(llm, database_url=pg_database)
    app = create_app(settings, run_worker=False, migrate_schema=True)
    async with LifespanManager(app, startup_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/readyz")).status_code == 200
            name = pg_database.rsplit("/", 1)[1]
            await admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            await admin(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            )
            try:
                ready = await c.get("/readyz")
                assert ready.status_code == 503 and ready.json()["database"] == "unhealthy"
                response = await c.post(EXECUTE, json={"task": "x", "background": True})
                error = error_of(response, 503)
                assert error["code"] == "service_unavailable"
                assert response.headers["retry-after"]
                # a transaction (an Idempotency-Key's insert) and a read: the same answer
                keyed = await c.post(
                    EXECUTE,
                    json={"task": "x", "background": True},
                    headers={"Idempotency-Key": "db-down"},
                )
                assert error_of(keyed, 503)["code"] == "service_unavailable"
                listed = await c.get("/api/v1/agent/executions")
                assert error_of(listed, 503)["code"] == "service_unavailable"
            finally:
                await admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
