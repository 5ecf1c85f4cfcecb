"""Webhooks through the public API: an execution's end is POSTed, signed, to its webhook_url;
the delivery log is readable; private targets need the operator's allowlist."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from agent_platform.app import create_app
from agent_platform.webhooks.signing import generate_secret, verify
from tests.conftest import make_settings
from tests.fakes.llm_server import FakeLLMServer

SECRET = generate_secret()


class Receiver(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    handler = type("R", (Receiver,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()


async def app_client(llm: FakeLLMServer, backend: dict[str, Any], **extra: Any):  # type: ignore[no-untyped-def]
    settings = make_settings(llm, webhook_secret=SECRET, **backend, **extra)
    return create_app(settings, run_worker=True, migrate_schema=True)


@pytest.fixture
async def hooked(llm: FakeLLMServer, backend: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    app = await app_client(llm, backend, allowed_private_networks=["127.0.0.0/8"])
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def deliveries(client: httpx.AsyncClient, execution_id: str, status: str) -> list[dict]:
    for _ in range(100):
        found = (await client.get(f"/api/v1/agent/execution/{execution_id}/webhooks")).json()
        if found["deliveries"] and all(d["status"] == status for d in found["deliveries"]):
            return list(found["deliveries"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"deliveries never reached {status}: {found}")


async def test_end_of_execution_is_posted_signed(
    hooked: httpx.AsyncClient, receiver: tuple[str, type[Receiver]]
) -> None:
    url, handler = receiver
    body = {"task": "What is 2 + 2?", "tools": [], "webhook_url": url, "metadata": {"k": "v"}}
    done = (await hooked.post("/api/v1/agent/execute", json=body)).json()
    log = await deliveries(hooked, done["execution_id"], "delivered")
    assert [d["event_type"] for d in log] == ["execution.completed"]
    assert log[0]["attempts_log"][0]["status_code"] == 204
    headers, raw = handler.received[0]
    verify(SECRET, headers, raw)  # raises if the signature is wrong
    payload = json.loads(raw)
    assert payload["type"] == "execution.completed"
    assert payload["data"]["execution_id"] == done["execution_id"]
    assert payload["data"]["result"] == "4" and payload["data"]["metadata"] == {"k": "v"}


async def test_private_target_refused_without_allowlist(
    llm: FakeLLMServer, backend: dict[str, Any], receiver: tuple[str, type[Receiver]]
) -> None:
    url, handler = receiver
    app = await app_client(llm, backend)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"task": "What is 2 + 2?", "tools": [], "webhook_url": url}
            done = (await client.post("/api/v1/agent/execute", json=body)).json()
            log = await deliveries(client, done["execution_id"], "failed")
    assert handler.received == []
    assert "127.0.0.1" in log[0]["last_error"] or "not allowed" in log[0]["last_error"].lower()
