"""`agent-platform serve` as a newcomer runs it: one process, SQLite, no Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.procs import BIN, free_port
from tests.fakes.llm_server import FakeLLMServer, Text, code, final


@pytest.fixture
def served(llm: FakeLLMServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "ANTHROPIC_API_KEY": "test",
        "ANTHROPIC_BASE_URL": llm.base_url,
        "DATA_DIR": str(tmp_path / "data"),
        "API_PORT": str(port),
        "POLL_INTERVAL_S": "0.5",
    }
    proc = subprocess.Popen(
        [str(BIN), "serve"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url, proc, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_serve_announces_itself_and_answers_the_seed_examples(served) -> None:  # type: ignore[no-untyped-def]
    url, proc, home = served
    with httpx.Client(base_url=url, timeout=60) as http:
        health = http.get("/health").json()
        assert health["mode"] == "embedded" and health["redis"].startswith("not configured")
        body = http.post(
            "/api/v1/agent/execute", json={"task": "What is 2 + 2? Just give me the number."}
        ).json()
        assert body["status"] == "completed" and body["result"] == "4" and len(body["steps"]) == 3
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    text = out.decode()
    assert f"listening on {url}" in text and "open to loopback only" in text
    assert "New task" not in text and "Step 1" not in text  # smolagents prints nothing
    assert (home / "data" / "agent_platform.db").exists()


def test_client_disconnect_does_not_stop_the_execution(served, llm: FakeLLMServer) -> None:  # type: ignore[no-untyped-def]
    url, _, _ = served
    kw = f"gone-{uuid.uuid4().hex[:8]}"
    # the client gives up (2 s) while the first model call (4 s) is still running; the
    # margin lets a loaded machine accept the request before the client goes away
    llm.script(kw, [Text(code("print(1)").text, delay_ms=4000), final("'finished anyway'")])
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/api/v1/agent/execute", json={"task": kw, "tools": []}, timeout=2)
    with httpx.Client(base_url=url, timeout=10) as http:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            executions = http.get("/api/v1/agent/executions").json()["executions"]
            assert len(executions) == 1, executions  # accepted although the client left
            execution = executions[0]
            if execution["status"] not in ("queued", "running"):
                break
            time.sleep(0.2)
    assert (execution["status"], execution["result"]) == ("completed", "finished anyway"), execution
    assert llm.calls(kw) == 2


def test_serve_refuses_a_public_address_without_override(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN), "serve", "--host", "0.0.0.0"],
        env={"PATH": os.environ["PATH"], "DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr


def test_restart_of_embedded_serve_resumes_on_sqlite(llm: FakeLLMServer, tmp_path: Path) -> None:
    """SIGTERM drains the in-process worker; the next `serve` resumes from the SQLite file."""
    kw = f"sqlite-resume-{uuid.uuid4().hex[:8]}"
    llm.script(
        kw,
        [
            code("base = 20\nprint(base)"),
            Text(code("more = base + 1\nprint(more)").text, delay_ms=1500),
            Text(code("print(more)").text, delay_ms=1500),
            final("more * 2"),
        ],
    )
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "ANTHROPIC_API_KEY": "test",
        "ANTHROPIC_BASE_URL": llm.base_url,
        "DATA_DIR": str(tmp_path / "data"),
        "API_PORT": str(port),
        "POLL_INTERVAL_S": "0.5",
    }
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([str(BIN), "serve"], env=env, cwd=tmp_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("serve did not start")

    first = start()
    try:
        body = {"task": kw, "tools": [], "background": True}
        execution_id = httpx.post(url + "/api/v1/agent/execute", json=body).json()["execution_id"]
        deadline = time.monotonic() + 20
        while llm.calls(kw) < 2 and time.monotonic() < deadline:  # step 2 is in flight
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    second = start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            execution = httpx.get(f"{url}/api/v1/agent/execution/{execution_id}").json()
            if execution["status"] == "completed":
                break
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    assert execution["result"] == "42"
    assert execution["attempt"] == 2 and execution["resumed_steps"] == 2
    counts: dict[int, int] = {}
    for r in llm.requests:
        if r.keyword == kw:
            counts[r.index] = counts.get(r.index, 0) + 1
    assert set(counts.values()) == {1}  # drained after step 2: no model call repeated
