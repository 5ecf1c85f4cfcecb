"""Load generator, run as its own process: `python -m bench.load < config.json`.

It prints one JSON line with the results. Its own process so it neither shares a GIL with the
orchestrator (which samples /proc every 250 ms) nor hides its CPU use: it reports the CPU it
consumed itself, which on a 2-core machine is CPU the platform did not get.

* `closed` loop: `c` slots, each with its own keep-alive connection, each starting
  the next execution when its previous one ended, until `n` executions were done. Modes:
  `wait` (POST /execute blocks until the end), `background` (202, then GET every
  `poll_interval_s` until final) and `stream` (SSE until `done`; the arrival time of the first
  `step` event is recorded on the wall clock, to compare with the provider's log).
  Slots are spread round-robin over `urls` (several api processes, no load balancer).
  With `timeline`, each execution's id, slot and send and answer times (wall clock) come
  back too, for `bench.timeline`.
* Both send `headers` (from `bench/run.py --header`, an API key say) with every request.
* `open` loop: requests sent on a fixed schedule (`rate` per second) whatever the answers do;
  latency counts from the *scheduled* send time, so a server that falls behind cannot hide it
  by slowing the client down (no coordinated omission).

Both use `bench.rawhttp`, not httpx: an `httpx.AsyncClient` cost 1.2-1.75 ms of CPU per
execution here, this client 0.22-0.35 ms, and on a 2-core machine that CPU is taken from the
platform and, with answers arriving in bursts, counted in the latencies.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.rawhttp import Connection, HttpError, Pool
from bench.stats import latency_summary, steady_throughput

EXECUTE = "/api/v1/agent/execute"
EXECUTION = "/api/v1/agent/execution/"
FINAL = {"completed", "failed", "cancelled", "timed_out"}
EXPECTED_RESULT = "4"  # the fake provider's default script answers final_answer(str(2 + 2))


class Failed(Exception):
    """An execution or request that did not end as expected (counted as an error)."""


def _check_completed(body: dict[str, Any]) -> None:
    if body.get("status") != "completed" or body.get("result") != EXPECTED_RESULT:
        raise Failed(
            f"status={body.get('status')} result={body.get('result')!r} "
            f"error_code={body.get('error_code')} error={str(body.get('error'))[:200]}"
        )


def _answer(what: str, status: int, body: bytes, expected: int) -> Any:
    """The JSON of an answer with the `expected` status; anything else is a failure."""
    if status != expected:
        raise Failed(f"{what}HTTP {status}: {body[:200]!r}")
    return json.loads(body)


async def run_wait(conn: Connection, task: str, cfg: dict[str, Any]) -> dict[str, Any]:
    body = _answer("", *await conn.post_json(EXECUTE, {"task": task, "tools": []}), 200)
    _check_completed(body)
    return {"execution_id": body["execution_id"]}


async def run_background(conn: Connection, task: str, cfg: dict[str, Any]) -> dict[str, Any]:
    submit = {"task": task, "tools": [], "background": True}
    execution_id = _answer("", *await conn.post_json(EXECUTE, submit), 202)["execution_id"]
    interval = float(cfg.get("poll_interval_s", 0.02))
    for _ in range(int(cfg["timeout_s"] / interval) + 1):  # bounded by the timeout
        await asyncio.sleep(interval)
        body = _answer("poll ", *await conn.get(EXECUTION + execution_id), 200)
        if body["status"] in FINAL:
            _check_completed(body)
            return {"execution_id": execution_id}
    raise Failed(f"still {body['status']} after {cfg['timeout_s']} s")


async def run_stream(conn: Connection, task: str, cfg: dict[str, Any]) -> dict[str, Any]:
    first_step_wall: float | None = None
    execution_id: str | None = None
    event = ""
    submit = {"task": task, "tools": [], "stream": True}
    async with conn.request("POST", EXECUTE, submit) as r:
        if r.status != 200:
            raise Failed(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        async for line in r.lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
                if event == "step" and first_step_wall is None:
                    first_step_wall = time.time()
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if event == "execution":
                    execution_id = data.get("execution_id")
                elif event == "done":
                    _check_completed(data)
                    return {"execution_id": execution_id, "first_step_wall": first_step_wall}
    raise Failed("stream ended without a `done` event")


RUNNERS: dict[str, Callable[[Connection, str, dict[str, Any]], Awaitable[dict[str, Any]]]]
RUNNERS = {"wait": run_wait, "background": run_background, "stream": run_stream}


async def closed_loop(cfg: dict[str, Any]) -> dict[str, Any]:
    urls: list[str] = cfg["urls"]
    c, n, mode = int(cfg["c"]), int(cfg["n"]), cfg["mode"]
    runner = RUNNERS[mode]
    counter = itertools.count()
    latencies: list[float] = []
    executions: list[list[tuple[float, float]]] = [[] for _ in range(c)]  # (sent, answered)
    errors: list[str] = []
    details: list[dict[str, Any]] = []
    timeout_s = float(cfg["timeout_s"])

    async def slot(index: int, conn: Connection, done: list[tuple[float, float]]) -> None:
        for k in counter:  # bounded: every slot stops once n executions were started
            if k >= n:
                return
            task = f"{cfg['task_prefix']} #{k}: what is 2 + 2?"
            sent_wall, t0 = time.time(), time.perf_counter()
            try:
                async with asyncio.timeout(timeout_s):
                    extra = await runner(conn, task, cfg)
            except (Failed, HttpError, OSError, TimeoutError, ValueError, KeyError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            ended, answered_wall = time.perf_counter(), time.time()
            latencies.append((ended - t0) * 1000)
            done.append((t0, ended))
            details.append(
                {
                    "task": task,
                    "slot": index,
                    "sent_wall": sent_wall,
                    "answered_wall": answered_wall,
                    **extra,
                }
            )

    headers: dict[str, str] = cfg.get("headers") or {}
    conns = [Connection(urls[i % len(urls)], headers) for i in range(c)]
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        slots = enumerate(zip(conns, executions, strict=True))
        await asyncio.gather(*(slot(i, conn, done) for i, (conn, done) in slots))
        wall, cpu_run = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        for conn in conns:
            conn.close()
    out: dict[str, Any] = {
        "n": n,
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_s": round(wall, 3),
        "client_cpu_run_s": round(cpu_run, 2),  # the timed loop only (not imports and setup)
        "throughput": round(len(latencies) / wall, 2) if wall > 0 else 0.0,
        # while every client had one in flight (no lockstep start, no drain): see bench.stats
        "steady": steady_throughput(executions),
        **latency_summary(latencies),
    }
    if mode == "stream" or cfg.get("timeline"):  # per execution, on the wall clock
        out["details"] = details
    return out


async def open_loop(cfg: dict[str, Any]) -> dict[str, Any]:
    rate, duration = float(cfg["rate"]), float(cfg["duration_s"])
    warmup = float(cfg.get("warmup_s", 1.0))
    paths: list[tuple[str, str]] = [(kind, path) for kind, path in cfg["paths"]]
    total = int(rate * (duration + warmup))
    pool = Pool(cfg["urls"], int(cfg.get("connections_per_url", 32)), cfg.get("headers") or {})
    by_kind: dict[str, list[float]] = {}
    service: list[float] = []
    errors: list[str] = []
    worst: dict[int, float] = {}  # second of the run → slowest request scheduled in it
    t0 = time.perf_counter() + 0.05

    async def one(kind: str, path: str, target: float) -> None:
        sent = time.perf_counter()
        try:
            status, body = await pool.get(path)
            if status != 200:
                raise Failed(f"{kind} HTTP {status}: {body[:200]!r}")
        except (Failed, HttpError, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        done = time.perf_counter()
        if target >= t0 + warmup:
            by_kind.setdefault(kind, []).append((done - target) * 1000)
            service.append((done - sent) * 1000)
            second = int(target - t0 - warmup)
            worst[second] = max(worst.get(second, 0.0), (done - target) * 1000)

    tasks: list[asyncio.Task[None]] = []
    lag_max = 0.0
    try:
        for k in range(total):
            target = t0 + k / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag_max = max(lag_max, -delay)
            kind, path = paths[k % len(paths)]
            tasks.append(asyncio.create_task(one(kind, path, target)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    finally:
        pool.close()
    wall = time.perf_counter() - t0
    everything = [v for values in by_kind.values() for v in values]
    return {
        "rate": rate,
        "duration_s": duration,
        "sent": len(tasks),
        "achieved_rate": round(len(tasks) / wall, 1),
        "errors": len(errors),
        "error_samples": errors[:3],
        "scheduler_lag_max_ms": round(lag_max * 1000, 2),
        **latency_summary(everything),
        "service_time": latency_summary(service),
        "worst_ms_per_second": [round(worst[s], 1) for s in sorted(worst)],
        "by_kind": {
            kind: {"n": len(values), **latency_summary(values)}
            for kind, values in sorted(by_kind.items())
        },
    }


def main() -> int:
    cfg = json.loads(sys.stdin.read())
    try:
        import uvloop  # the platform's uvicorn runs on uvloop too; it is cheaper per request

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    result = run(closed_loop(cfg) if cfg["kind"] == "closed" else open_loop(cfg))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["client_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
