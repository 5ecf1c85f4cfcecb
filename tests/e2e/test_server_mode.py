"""Server mode as deployed: PostgreSQL + Redis, `api` and `worker` as separate OS processes."""

from __future__ import annotations

import concurrent.futures
import time
import uuid

import httpx

from tests.e2e.procs import Processes, wait_for
from tests.fakes.llm_server import FakeLLMServer, Text, code, final

EXECUTE = "/api/v1/agent/execute"


def test_seed_curl_examples_against_separate_processes(procs: Processes) -> None:
    url = procs.start_api()
    procs.start_worker()
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/health").json()["status"] == "healthy"
        assert http.get("/health").json()["worker"] == "separate process"
        assert http.get("/api/v1/tenant/info").json()["tenant_id"] == "tenant-e2e"
        body = http.post(EXECUTE, json={"task": "What is 2 + 2? Just give me the number."}).json()
        assert body["status"] == "completed" and body["result"] == "4"
        assert len(body["steps"]) == 3
        subset = http.post(
            EXECUTE, json={"task": "Search for AI news", "tools": ["web_search", "visit_webpage"]}
        ).json()
        assert subset["status"] == "completed" and subset["tools"] == [
            "web_search",
            "visit_webpage",
        ]
        none = http.post(EXECUTE, json={"task": "What is 2+2?", "tools": []}).json()
        assert none["status"] == "completed" and none["tools"] == []
        listed = http.get("/api/v1/agent/executions?limit=50").json()
        assert listed["total"] == 3


def test_fifty_executions_three_workers_each_runs_once(
    procs: Processes, llm: FakeLLMServer
) -> None:
    url = procs.start_api()
    for _ in range(3):
        procs.start_worker("--concurrency", "8")
    tag = uuid.uuid4().hex[:6]
    keywords = [f"c{tag}-{i:02d}" for i in range(50)]
    for kw in keywords:
        llm.script(kw, [code("v = 1\nprint(v)"), final(f"'{kw}'")])

    def submit(kw: str) -> dict:
        with httpx.Client(base_url=url, timeout=60) as http:
            return http.post(EXECUTE, json={"task": kw, "tools": [], "background": True}).json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        submitted = list(pool.map(submit, keywords))
    ids = [s["execution_id"] for s in submitted]
    assert len(set(ids)) == 50
    with httpx.Client(base_url=url, timeout=30) as http:

        def all_done() -> list[dict]:
            page = http.get("/api/v1/agent/executions?limit=100&status=completed").json()
            return page["executions"] if page["total"] == 50 else []

        try:
            finished = wait_for(all_done, timeout_s=60, interval_s=0.25)
        except AssertionError:
            page = http.get("/api/v1/agent/executions?limit=100").json()
            states = [(e["status"], e["attempt"], e["error_code"]) for e in page["executions"]]
            raise AssertionError(f"not all completed in 60 s: {sorted(states)}") from None
    assert sorted(e["result"] for e in finished) == sorted(keywords)
    assert all(e["attempt"] == 1 for e in finished)
    for kw in keywords:
        assert llm.calls(kw) == 2, kw  # two model calls per execution: nothing ran twice


def test_stream_and_cancel_across_processes(procs: Processes, llm: FakeLLMServer) -> None:
    """SSE served by the api process while a separate worker process runs the execution;
    a cancel sent to the api reaches the worker through Redis."""
    kw = f"xproc-{uuid.uuid4().hex[:8]}"
    llm.script(kw, [Text(code(f"print({i})").text, delay_ms=150) for i in range(3)] + [final("7")])
    url = procs.start_api()
    procs.start_worker()
    with httpx.Client(base_url=url, timeout=30) as http:
        kinds, ids = [], []
        with http.stream("POST", EXECUTE, json={"task": kw, "tools": [], "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kinds.append(line.removeprefix("event: "))
                if line.startswith("id: "):
                    ids.append(int(line.removeprefix("id: ")))
                if kinds and kinds[-1] == "done" and line == "":
                    break
        assert kinds[0] == "execution" and kinds[-1] == "done" and kinds.count("step") == 5
        assert ids == list(range(1, len(ids) + 1))

        slow = f"xcancel-{uuid.uuid4().hex[:8]}"
        llm.script(slow, [Text(code("print(1)").text, delay_ms=500)] * 30)
        body = {"task": slow, "tools": [], "background": True, "max_steps": 30}
        execution_id = http.post(EXECUTE, json=body).json()["execution_id"]
        wait_for(lambda: llm.calls(slow) >= 2)
        cancelled = http.post(f"/api/v1/agent/execution/{execution_id}/cancel").json()
        assert cancelled["status"] == "cancelled"
        calls = llm.calls(slow)
        time.sleep(1.0)
        assert llm.calls(slow) == calls
