"""The OpenAPI document at /docs is the API's contract: pin its routes and error shapes."""

from __future__ import annotations

import httpx

EXPECTED = {
    ("get", "/health"),
    ("get", "/livez"),
    ("get", "/readyz"),
    ("get", "/api/v1/tenant/info"),
    ("post", "/api/v1/agent/execute"),
    ("get", "/api/v1/agent/execution/{execution_id}"),
    ("get", "/api/v1/agent/execution/{execution_id}/events"),
    ("post", "/api/v1/agent/execution/{execution_id}/cancel"),
    ("get", "/api/v1/agent/execution/{execution_id}/webhooks"),
    ("get", "/api/v1/agent/executions"),
    ("get", "/api/v1/agent/tools"),
    ("post", "/api/v1/sessions"),
    ("get", "/api/v1/sessions"),
    ("get", "/api/v1/sessions/{session_id}"),
    ("delete", "/api/v1/sessions/{session_id}"),
}


async def test_openapi_lists_every_route_with_json_errors(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    routes = {(m, p) for p, item in spec["paths"].items() for m in item}
    assert routes == EXPECTED
    execute = spec["paths"]["/api/v1/agent/execute"]["post"]
    assert {"200", "202", "409", "413", "422", "503"} <= set(execute["responses"])
    assert "text/event-stream" in execute["responses"]["200"]["content"]
    request = spec["components"]["schemas"]["ExecuteRequest"]["properties"]
    for field in ("task", "tools", "model", "max_steps", "metadata", "background", "stream",
                  "session_id", "on_busy", "timeout_seconds", "webhook_url"):  # fmt: skip
        assert field in request
    step = spec["components"]["schemas"]["StepOut"]["properties"]
    assert {"step", "action", "observation", "usage", "duration_ms"} <= set(step)
    assert (await client.get("/docs")).status_code == 200
