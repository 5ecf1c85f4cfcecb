"""Queued work starts on a wake-up, never on the poll (disabled here): a backlog on a full
worker, a burst across two workers, a session turn queued behind another."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agent_platform.config import Settings
from agent_platform.container import Platform
from agent_platform.domain import WAKE_CHANNEL
from agent_platform.services.executions import Submission
from tests.conftest import make_settings, settled_listeners
from tests.fakes.llm_server import FakeLLMServer, Text, code, final

EXECUTE = "/api/v1/agent/execute"
POLL_NEVER_S = 600.0


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, llm: FakeLLMServer, backend: dict[str, Any]
) -> Settings:
    """One slot unless a test asks for more (indirect parametrization); never polls."""
    return make_settings(
        llm,
        **backend,
        worker_concurrency=getattr(request, "param", 1),
        poll_interval_s=POLL_NEVER_S,
        reaper_interval_s=600,
    )


async def run_backlog(client: httpx.AsyncClient, llm: FakeLLMServer, n: int) -> list[str | None]:
    """Submit `n` executions at once (150 ms each), then the result of each once all ended,
    polling the api for 20 s: far less than the workers' poll interval."""
    ids = []
    for i in range(n):
        kw = f"wake-{uuid.uuid4().hex[:8]}"
        llm.script(kw, [Text(code(f"x = {i}").text, delay_ms=150), final(f"'done {i}'")])
        response = await client.post(EXECUTE, json={"task": kw, "tools": [], "background": True})
        assert response.status_code == 202
        ids.append(response.json()["execution_id"])
    return await results_of(client, ids)


async def results_of(client: httpx.AsyncClient, ids: list[str]) -> list[str | None]:
    """Each execution's result once all ended, polling the api for at most 20 s."""
    results: dict[str, str | None] = {}
    for _ in range(400):
        for execution_id in ids:
            body = (await client.get(f"/api/v1/agent/execution/{execution_id}")).json()
            if body["status"] not in ("queued", "running"):
                results[execution_id] = body["result"]
        if len(results) == len(ids):
            break
        await asyncio.sleep(0.05)
    return [results.get(i) for i in ids]


async def test_a_full_worker_takes_the_backlog_as_slots_free(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    assert await run_backlog(client, llm, 3) == ["done 0", "done 1", "done 2"]


@pytest.fixture
async def second_worker(settings: Settings) -> AsyncIterator[Platform]:
    """Another worker process's worth (its own bus connection, pool and sandbox), four slots."""
    platform = Platform(settings.model_copy(update={"worker_concurrency": 4}))
    await platform.start(migrate_schema=False)
    await platform.start_worker_in_background()
    try:
        yield platform
    finally:
        await platform.close(grace_s=5)


# several workers share work through PostgreSQL and Redis (embedded SQLite has one worker)
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_with_several_workers_a_burst_beyond_one_worker_is_never_left_for_the_poll(
    client: httpx.AsyncClient, llm: FakeLLMServer, second_worker: Platform
) -> None:
    """Each new execution's wake-up is acted on by one worker only; one that fills up before
    claiming all the executions whose wake-ups it took wakes the others (poll disabled)."""
    await settled_listeners(second_worker.bus, WAKE_CHANNEL, 2)
    assert await run_backlog(client, llm, 8) == [f"done {i}" for i in range(8)]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_new_executions_wake_up_is_acted_on_by_one_worker(settings: Settings) -> None:
    """Two workers hear it, one claims (each extra claim would find nothing); a wake-up for a
    requeue is for every worker with room."""
    platforms = [Platform(settings), Platform(settings), Platform(settings)]
    for platform in platforms:
        await platform.bus.start()
    workers = [platforms[0].make_worker(), platforms[1].make_worker()]
    try:
        async with (
            platforms[0].bus.subscribe(WAKE_CHANNEL) as first,
            platforms[1].bus.subscribe(WAKE_CHANNEL) as second,
        ):
            listening = [
                asyncio.create_task(w._listen(q))
                for w, q in zip(workers, (first, second), strict=True)
            ]
            for execution_id in (str(uuid.uuid4()) for _ in range(5)):
                for worker in workers:
                    worker._wake.clear()
                await platforms[2].bus.publish(WAKE_CHANNEL, {"execution_id": execution_id})
                for _ in range(100):
                    if any(w._wake.is_set() for w in workers):
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)  # the other worker has heard it too by now
                assert [w._wake.is_set() for w in workers].count(True) == 1
            for worker in workers:
                worker._wake.clear()
            await platforms[2].bus.publish(WAKE_CHANNEL, {"reason": "requeued"})
            for _ in range(100):
                if all(w._wake.is_set() for w in workers):
                    break
                await asyncio.sleep(0.01)
            assert all(w._wake.is_set() for w in workers)
            for task in listening:
                task.cancel()
    finally:
        for platform in platforms:
            await platform.bus.close()
            await platform.db.dispose()


@pytest.mark.parametrize("settings", [4], indirect=True)
async def test_a_wake_up_for_what_a_claim_took_starts_no_other_claim(
    settings: Settings, llm: FakeLLMServer
) -> None:
    """A claim takes every queued execution it has room for, including those committed while
    their wake-ups were on the way. Such a wake-up, heard while that claim ran or after it,
    starts no second claim (it would find nothing); one for an execution it did not take
    does."""
    platform = Platform(settings)
    await platform.start(migrate_schema=True)
    worker = platform.make_worker()
    heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    listening = asyncio.create_task(worker._listen(heard))
    try:
        ids = []
        for i in range(2):
            kw = f"late-{uuid.uuid4().hex[:8]}"
            llm.script(kw, [final(f"'done {i}'")])
            sub = Submission(task=kw, tools=[])
            ids.append((await platform.executions.submit(settings.tenant.id, sub)).execution.id)
        worker._wake_up(ids[0])  # heard while the claim below runs
        assert await worker._claim_and_start() == 2
        assert not worker._wake.is_set()
        other = str(uuid.uuid4())  # committed after the claim: it did not take it
        await heard.put({"execution_id": ids[1]})  # heard after it
        await heard.put({"execution_id": other})
        for _ in range(100):
            if worker._wake.is_set():
                break
            await asyncio.sleep(0.01)
        assert worker._wanted == {other}
    finally:
        listening.cancel()
        await worker.stop(grace_s=5)
        await platform.close(grace_s=5)


@pytest.mark.parametrize("settings", [4], indirect=True)
async def test_a_session_turn_queued_behind_another_starts_when_it_ends(
    client: httpx.AsyncClient, llm: FakeLLMServer
) -> None:
    """The worker has room, but the second turn may only start once the first ended: that
    end wakes the workers (poll disabled)."""
    kw = f"turns-{uuid.uuid4().hex[:8]}"
    llm.script(kw, [Text(code("x = 1").text, delay_ms=300), final("'first'"), final("'second'")])
    session_id = (await client.post("/api/v1/sessions", json={"title": "t"})).json()["session_id"]
    ids = []
    for task in (f"{kw} one", "two"):
        body = {"task": task, "tools": [], "session_id": session_id, "background": True}
        ids.append((await client.post(EXECUTE, json=body)).json()["execution_id"])
    assert await results_of(client, ids) == ["first", "second"]
