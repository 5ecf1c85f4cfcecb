"""Server mode as deployed: PostgreSQL + Redis, `api` and `worker` as separate OS processes."""

from __future__ import annotations

import concurrent.futures
import uuid

import httpx

from tests.e2e.procs import Processes, wait_for
from tests.fakes.llm_server import FakeLLMServer, code, final

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

        finished = wait_for(all_done, timeout_s=60, interval_s=0.25)
    assert sorted(e["result"] for e in finished) == sorted(keywords)
    assert all(e["attempt"] == 1 for e in finished)
    for kw in keywords:
        assert llm.calls(kw) == 2, kw  # two model calls per execution: nothing ran twice
