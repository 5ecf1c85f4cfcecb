"""Webhooks end to end on PostgreSQL and SQLite: a real receiver on loopback checks the
Standard Webhooks signature; failures are retried with backoff and every attempt is logged;
the SSRF guard refuses private targets; concurrent dispatchers never send an attempt twice."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from agent_platform.api import webhooks as webhooks_api
from agent_platform.api.errors import install_error_handlers
from agent_platform.config import Settings
from agent_platform.domain import (
    Execution,
    ExecutionStatus,
    RunOutcome,
    StepRecord,
    StepType,
    StopReason,
    utcnow,
)
from agent_platform.store import migrate, repos
from agent_platform.store.db import Database
from agent_platform.store.tables import executions
from agent_platform.webhooks import outbox
from agent_platform.webhooks.dispatcher import WebhookDispatcher
from agent_platform.webhooks.signing import InvalidSignature, generate_secret, verify

TENANT = "tenant-wh"
SECRET = generate_secret()


class Receiver:
    """A webhook endpoint on 127.0.0.1 that plays a script of answers: "ok" (200), "500",
    "drop" (close without answering), "slow" (answer after `slow_s`). Then "ok" forever,
    unless `default` says otherwise. Every request's signature is checked on arrival."""

    def __init__(self, script: list[str] | None = None, *, default: str = "ok") -> None:
        self.script = list(script or [])
        self.default = default
        self.slow_s = 1.5
        self.delay_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    verify(SECRET, self.headers, body)
                    signature = "valid"
                except InvalidSignature as exc:
                    signature = str(exc)
                with receiver.lock:
                    receiver.requests.append(
                        {"headers": dict(self.headers), "body": body, "signature": signature}
                    )
                    action = receiver.script.pop(0) if receiver.script else receiver.default
                time.sleep(receiver.delay_s)
                if action == "drop":
                    self.close_connection = True
                    return
                if action == "slow":
                    time.sleep(receiver.slow_s)
                answer = b'{"error": "receiver broke"}' if action == "500" else b"ok"
                self.send_response(500 if action == "500" else 200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks?src=test"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
async def db(backend: dict[str, Any]) -> AsyncIterator[Database]:
    database = Database(backend["database_url"])
    await migrate.upgrade(database)
    yield database
    await database.dispose()


def webhook_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "tenant_id": TENANT,
        "webhook_secret": SECRET,
        "allowed_private_networks": ["127.0.0.0/8"],
        "webhook_timeout_s": 5,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def dispatcher(db: Database, **overrides: Any) -> WebhookDispatcher:
    return WebhookDispatcher(db, webhook_settings(**overrides), base_delay_s=0.01, max_delay_s=0.05)


async def new_execution(db: Database, tenant: str = TENANT) -> Execution:
    ex = Execution(
        id=str(uuid.uuid4()),
        tenant_id=tenant,
        status=ExecutionStatus.QUEUED,
        task="t",
        tools=[],
        model="m",
        max_steps=3,
        metadata={"ticket": "T-42"},
        created_at=utcnow(),
    )
    async with db.begin() as conn:
        await repos.insert_execution(conn, ex)
    return ex


async def enqueue(db: Database, ex: Execution, url: str) -> str:
    outcome = RunOutcome(ExecutionStatus.COMPLETED, result="4", stop_reason=StopReason.FINAL_ANSWER)
    now = utcnow()
    async with db.begin() as conn:
        return await outbox.enqueue(
            conn,
            tenant_id=ex.tenant_id,
            execution_id=ex.id,
            url=url,
            event_type=outbox.final_event_type(outcome.status),
            payload=outbox.final_payload(ex, outcome, now),
            now=now,
        )


async def deliveries(db: Database, ex: Execution) -> list[outbox.Delivery]:
    async with db.connect() as conn:
        return await outbox.deliveries_for(conn, ex.tenant_id, ex.id)


async def drain(d: WebhookDispatcher, db: Database, ex: Execution, timeout_s: float = 15) -> None:
    """Run the dispatcher until every delivery of `ex` is settled."""
    deadline = time.monotonic() + timeout_s
    while any(x.status == "pending" for x in await deliveries(db, ex)):
        assert time.monotonic() < deadline, "deliveries did not settle"
        if not await d.run_once():
            await asyncio.sleep(0.02)


async def test_delivery_is_signed_and_logged(db: Database, receiver: Receiver) -> None:
    ex = await new_execution(db)
    delivery_id = await enqueue(db, ex, receiver.url)
    assert await dispatcher(db).run_once() == 1

    (request,) = receiver.requests
    assert request["signature"] == "valid"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["webhook-id"] == delivery_id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
    assert headers["content-type"] == "application/json"
    body = json.loads(request["body"])
    assert body["type"] == "execution.completed"
    assert body["data"]["execution_id"] == ex.id and body["data"]["result"] == "4"
    assert body["data"]["metadata"] == {"ticket": "T-42"}
    assert body["timestamp"].startswith(str(utcnow().year))

    (d,) = await deliveries(db, ex)
    assert (d.id, d.status, d.attempts, d.last_status_code) == (delivery_id, "delivered", 1, 200)
    assert d.delivered_at is not None and d.next_attempt_at is None and d.last_error is None
    assert [(a.attempt, a.status_code, a.error) for a in d.attempts_log] == [(1, 200, None)]
    assert await dispatcher(db).run_once() == 0  # nothing is sent twice


async def test_without_a_secret_deliveries_are_unsigned(db: Database, receiver: Receiver) -> None:
    ex = await new_execution(db)
    delivery_id = await enqueue(db, ex, receiver.url)
    assert await dispatcher(db, webhook_secret=None).run_once() == 1
    headers = {k.lower(): v for k, v in receiver.requests[0]["headers"].items()}
    assert headers["webhook-id"] == delivery_id and headers["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in headers


async def test_failures_are_retried_until_delivered(db: Database) -> None:
    ex = await new_execution(db)
    with Receiver(["500", "drop"]) as receiver:
        delivery_id = await enqueue(db, ex, receiver.url)
        await drain(dispatcher(db), db, ex)
    assert [r["headers"]["webhook-id"] for r in receiver.requests] == [delivery_id] * 3
    assert all(r["signature"] == "valid" for r in receiver.requests)
    (d,) = await deliveries(db, ex)
    assert (d.status, d.attempts, d.last_status_code, d.last_error) == ("delivered", 3, 200, None)
    log = d.attempts_log
    assert [(a.attempt, a.status_code) for a in log] == [(1, 500), (2, None), (3, 200)]
    assert log[0].error == 'HTTP 500: {"error": "receiver broke"}'
    assert "invalid HTTP response" in (log[1].error or "")
    assert log[2].error is None
    assert log[0].started_at < log[1].started_at < log[2].started_at


async def test_a_timeout_is_a_failed_attempt(db: Database) -> None:
    ex = await new_execution(db)
    with Receiver(["slow"]) as receiver:
        await enqueue(db, ex, receiver.url)
        started = time.monotonic()
        await dispatcher(db, webhook_timeout_s=0.3).run_once()
        assert time.monotonic() - started < 1.2  # cut off at the deadline
        (d,) = await deliveries(db, ex)
        assert (d.status, d.attempts, d.last_status_code) == ("pending", 1, None)
        assert "did not answer within 0.3 s" in (d.last_error or "")
        assert d.attempts_log[0].duration_ms < 1000
        await drain(dispatcher(db, webhook_timeout_s=0.3), db, ex)
    (d,) = await deliveries(db, ex)
    assert (d.status, d.attempts) == ("delivered", 2)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_private_targets_are_refused(db: Database, receiver: Receiver, host: str) -> None:
    ex = await new_execution(db)
    url = receiver.url.replace("127.0.0.1", host)
    await enqueue(db, ex, url)
    guarded = WebhookDispatcher(db, webhook_settings(allowed_private_networks=[]))
    assert await guarded.run_once() == 1
    assert receiver.requests == []
    (d,) = await deliveries(db, ex)
    # a policy refusal is final: retrying cannot change it
    assert (d.status, d.attempts, d.last_status_code) == ("failed", 1, None)
    assert "loopback address" in (d.last_error or "") and "refusing" in (d.last_error or "")
    assert [(a.attempt, a.status_code, a.error) for a in d.attempts_log] == [
        (1, None, d.last_error)
    ]


async def test_redirects_are_not_followed(db: Database) -> None:
    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ex = await new_execution(db)
        await enqueue(db, ex, f"http://127.0.0.1:{server.server_address[1]}/")
        await dispatcher(db).run_once()
    finally:
        server.shutdown()
        server.server_close()
    (d,) = await deliveries(db, ex)
    assert (d.status, d.last_status_code) == ("pending", 307)
    assert "redirects are not followed" in (d.last_error or "")


async def test_gives_up_after_max_attempts(db: Database) -> None:
    ex = await new_execution(db)
    with Receiver(default="500") as receiver:
        await enqueue(db, ex, receiver.url)
        d3 = dispatcher(db, webhook_max_attempts=3)
        await drain(d3, db, ex)
        assert await d3.run_once(utcnow() + timedelta(days=1)) == 0
    assert len(receiver.requests) == 3
    (d,) = await deliveries(db, ex)
    assert (d.status, d.attempts, d.last_status_code) == ("failed", 3, 500)
    assert d.next_attempt_at is None and d.delivered_at is None
    assert [(a.attempt, a.status_code) for a in d.attempts_log] == [(1, 500), (2, 500), (3, 500)]


async def test_concurrent_dispatchers_never_double_send(
    db: Database, backend: dict[str, Any], receiver: Receiver
) -> None:
    receiver.delay_s = 0.02
    ex = await new_execution(db)
    ids = {await enqueue(db, ex, receiver.url) for _ in range(20)}
    other_db = Database(backend["database_url"])
    try:
        a = WebhookDispatcher(db, webhook_settings(), batch_size=3)
        b = WebhookDispatcher(other_db, webhook_settings(), batch_size=3)
        rounds = 0
        while sum(await asyncio.gather(a.run_once(), b.run_once(), a.run_once())):
            rounds += 1
            assert rounds < 30
    finally:
        await other_db.dispose()
    sent = Counter(r["headers"]["webhook-id"] for r in receiver.requests)
    assert set(sent) == ids and set(sent.values()) == {1}
    assert {(d.status, d.attempts) for d in await deliveries(db, ex)} == {("delivered", 1)}


async def test_a_lapsed_claim_is_retried_and_the_stale_result_fenced(
    db: Database, receiver: Receiver
) -> None:
    ex = await new_execution(db)
    await enqueue(db, ex, receiver.url)
    now = utcnow()
    async with db.begin() as conn:  # a dispatcher claims, then dies before recording
        (stale,) = await outbox.claim_due(
            conn, now=now, lease_s=60, limit=5, max_attempts=8, is_postgres=not db.is_sqlite
        )
    d = dispatcher(db)
    assert await d.run_once(now + timedelta(seconds=30)) == 0  # still leased
    assert await d.run_once(now + timedelta(seconds=61)) == 1  # lease lapsed: attempt 2
    attempt = outbox.DeliveryAttempt(stale.attempts, now, 5, 500, "HTTP 500")
    async with db.begin() as conn:
        applied = await outbox.record_attempt(
            conn, stale, attempt, status="pending", next_attempt_at=now, now=now
        )
    assert applied is False
    (row,) = await deliveries(db, ex)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 2, 200)
    assert [(a.attempt, a.status_code) for a in row.attempts_log] == [(1, 500), (2, 200)]
    assert len(receiver.requests) == 1


async def test_step_events_carry_the_step(db: Database, receiver: Receiver) -> None:
    ex = await new_execution(db)
    step = StepRecord(step=2, type=StepType.ACTION, started_at=utcnow(), duration_ms=7)
    async with db.begin() as conn:
        await outbox.enqueue(
            conn,
            tenant_id=TENANT,
            execution_id=ex.id,
            url=receiver.url,
            event_type=outbox.STEP_EVENT,
            payload=outbox.step_payload(ex, step),
            now=utcnow(),
        )
    assert await dispatcher(db).run_once() == 1
    body = json.loads(receiver.requests[0]["body"])
    assert body["type"] == "execution.step"
    assert body["data"] == {
        "execution_id": ex.id,
        "attempt": 0,
        "step": 2,
        "type": "action",
        "error": None,
        "started_at": step.started_at.isoformat(),
        "duration_ms": 7,
    }


async def test_run_loop_delivers_on_notify(db: Database, receiver: Receiver) -> None:
    d = dispatcher(db)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop, interval_s=30))
    try:
        await asyncio.sleep(0.1)  # the first (empty) round has run; now it waits 30 s
        ex = await new_execution(db)
        await enqueue(db, ex, receiver.url)
        d.notify()
        for _ in range(100):
            if receiver.requests:
                break
            await asyncio.sleep(0.05)
        assert len(receiver.requests) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_webhook_target_and_backoff(db: Database) -> None:
    ex = await new_execution(db)
    async with db.begin() as conn:
        assert await outbox.webhook_target(conn, TENANT, ex.id, None) == (None, False)
        assert await outbox.webhook_target(conn, TENANT, ex.id, "https://a.example/") == (
            "https://a.example/",
            False,
        )
        await conn.execute(
            update(executions)
            .where(executions.c.id == ex.id)
            .values(webhook_url="https://b.example/", webhook_steps=True)
        )
        assert await outbox.webhook_target(conn, TENANT, ex.id, "https://a.example/") == (
            "https://b.example/",
            True,
        )
        assert await outbox.webhook_target(conn, "other", ex.id, "https://a.example/") == (
            None,
            False,
        )
    d = WebhookDispatcher(db, webhook_settings(), rng=random.Random(7))
    for attempts, ceiling in [(1, 2), (3, 8), (11, 2048), (12, 3600), (30, 3600)]:
        delay = d.backoff_s(attempts)
        assert ceiling / 2 <= delay <= ceiling


async def test_delivery_log_api(db: Database, receiver: Receiver) -> None:
    ex = await new_execution(db)
    other = await new_execution(db, tenant="someone-else")
    delivery_id = await enqueue(db, ex, receiver.url)
    receiver.script = ["500"]
    await drain(dispatcher(db), db, ex)

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(webhooks_api.router)
    app.state.platform = SimpleNamespace(db=db, settings=webhook_settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(f"/api/v1/agent/execution/{ex.id}/webhooks")
        assert response.status_code == 200
        (d,) = response.json()["deliveries"]
        assert d["id"] == delivery_id and d["status"] == "delivered" and d["attempts"] == 2
        assert d["event_type"] == "execution.completed" and d["url"] == receiver.url
        assert d["last_status_code"] == 200 and d["delivered_at"] and d["created_at"]
        assert [(a["attempt"], a["status_code"]) for a in d["attempts_log"]] == [
            (1, 500),
            (2, 200),
        ]
        assert set(d["attempts_log"][0]) == {
            "attempt",
            "started_at",
            "duration_ms",
            "status_code",
            "error",
        }
        for missing in (other.id, str(uuid.uuid4()), "not-a-uuid"):
            response = await client.get(f"/api/v1/agent/execution/{missing}/webhooks")
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
