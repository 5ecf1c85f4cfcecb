"""Tests of the fake LLM provider, driven through the real ``anthropic`` and ``openai`` SDKs.

The fake is what every higher-level test trusts to behave like the real APIs, so these tests pin
its wire behaviour with the same clients production uses.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # tests/unit has no __init__.py, so rootdir is not on the path
    sys.path.insert(0, str(REPO_ROOT))

from tests.fakes.llm_server import (  # noqa: E402
    DEFAULT_REPLIES,
    FakeLLMServer,
    Hang,
    Text,
    code,
    count_tokens,
    final,
    remote_log,
    remote_reset,
    remote_script,
)

MODEL = "claude-test-model"
STEP_1 = "Thought: I will compute it.\n<code>\nresult = 2 + 2\nprint(result)\n"
CODE_STOPS = ["Observation:", "Calling tools:", "</code>"]


@pytest.fixture(scope="module")
def module_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture
def server(module_server: FakeLLMServer) -> FakeLLMServer:
    module_server.reset()
    return module_server


@pytest.fixture
def claude(server: FakeLLMServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=0)


@pytest.fixture
def gpt(server: FakeLLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="test", max_retries=0)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def ask(
    client: anthropic.Anthropic, messages: list[dict], **kwargs: object
) -> anthropic.types.Message:
    return client.messages.create(model=MODEL, max_tokens=1024, messages=messages, **kwargs)


def text_of(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


# --------------------------------------------------------------------------- replies


def test_anthropic_plain_reply(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    server.script("greet", [Text("Hello there!")])
    msg = ask(claude, [user("please greet me")])
    assert msg.id.startswith("msg_")
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == MODEL
    assert text_of(msg) == "Hello there!"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    (rec,) = server.requests
    assert (rec.protocol, rec.keyword, rec.index, rec.status) == ("anthropic", "greet", 0, 200)
    assert rec.body["messages"] == [user("please greet me")]


def test_openai_plain_reply(server: FakeLLMServer, gpt: openai.OpenAI) -> None:
    server.script("greet", [Text("Hello there!")])
    resp = gpt.chat.completions.create(
        model="gpt-test", messages=[{"role": "system", "content": "sys"}, user("greet")]
    )
    assert resp.object == "chat.completion" and resp.model == "gpt-test"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "Hello there!"
    assert resp.choices[0].finish_reason == "stop"
    assert server.calls("greet") == 1 and server.requests[0].protocol == "openai"


def test_default_script_is_a_codeagent_run_cut_at_stop_sequences(
    claude: anthropic.Anthropic, gpt: openai.OpenAI
) -> None:
    first = ask(claude, [user("anything")], stop_sequences=CODE_STOPS)
    assert text_of(first) == STEP_1
    assert (first.stop_reason, first.stop_sequence) == ("stop_sequence", "</code>")

    convo = [user("anything"), assistant(STEP_1 + "</code>"), user("Observation: 4")]
    second = ask(claude, convo, stop_sequences=CODE_STOPS)
    assert text_of(second) == "Thought: I have the answer.\n<code>\nfinal_answer(str(result))\n"

    uncut = gpt.chat.completions.create(model="gpt-test", messages=[user("anything")])
    assert uncut.choices[0].message.content == DEFAULT_REPLIES[0].text
    cut = gpt.chat.completions.create(model="gpt-test", messages=[user("x")], stop="</code>")
    assert cut.choices[0].message.content == STEP_1
    assert cut.choices[0].finish_reason == "stop"


def test_earliest_stop_sequence_wins(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    server.script("k", [Text("abc STOP2 def STOP1 ghi")])
    msg = ask(claude, [user("k")], stop_sequences=["STOP1", "STOP2"])
    assert text_of(msg) == "abc " and msg.stop_sequence == "STOP2"


def test_helpers_build_codeagent_steps() -> None:
    assert code("x = 1").text == "Thought: I will run some code.\n<code>\nx = 1\n</code>"
    assert final("'done'", thought="t").text == "Thought: t\n<code>\nfinal_answer('done')\n</code>"
    assert code("x", delay_ms=5).delay_ms == 5
    assert Hang(2.5).hang_s == 2.5


# --------------------------------------------------------------------------- usage


def test_usage_is_a_pure_function_of_the_texts(
    server: FakeLLMServer, claude: anthropic.Anthropic, gpt: openai.OpenAI
) -> None:
    assert [count_tokens(s) for s in ("", "abc", "abcd", "x" * 41)] == [1, 1, 2, 11]
    server.script("usage", [Text("r" * 30)])
    system = "s" * 17
    msgs = [user("usage " + "u" * 50), assistant("a" * 9), user("v" * 3)]
    msg = ask(claude, msgs, system=system)
    expected_in = count_tokens(system + msgs[0]["content"] + "a" * 9 + "vvv")
    assert msg.usage.input_tokens == expected_in
    assert msg.usage.output_tokens == count_tokens("r" * 30) == 8

    oai = gpt.chat.completions.create(
        model="gpt-test", messages=[{"role": "system", "content": system}, *msgs]
    )
    assert oai.usage is not None
    assert (oai.usage.prompt_tokens, oai.usage.completion_tokens) == (expected_in, 8)
    assert oai.usage.total_tokens == expected_in + 8
    assert sum(r.input_tokens for r in server.requests) == 2 * expected_in


def test_max_tokens_truncates_like_the_real_api(
    server: FakeLLMServer, claude: anthropic.Anthropic
) -> None:
    server.script("long", [Text("x" * 100)])
    msg = claude.messages.create(model=MODEL, max_tokens=5, messages=[user("long")])
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 5


# --------------------------------------------------------------------------- scripting


def test_script_index_counts_assistant_turns(
    server: FakeLLMServer, claude: anthropic.Anthropic, gpt: openai.OpenAI
) -> None:
    server.script("multi", [Text("A"), Text("B"), Text("C")])
    convo = [user("multi step task")]
    seen = []
    for _ in range(4):
        reply = text_of(ask(claude, convo))
        seen.append(reply)
        convo += [assistant(reply), user("next")]
    assert seen == ["A", "B", "C", "C"]  # past the end the last reply repeats
    assert [r.index for r in server.requests] == [0, 1, 2, 3]

    # OpenAI allows consecutive same-role messages: they count as one turn.
    merged = [user("multi"), user("more"), assistant("x"), assistant("y"), user("go")]
    resp = gpt.chat.completions.create(model="gpt-test", messages=merged)
    assert resp.choices[0].message.content == "B"


def test_keyword_is_matched_in_the_first_user_turn_only(
    server: FakeLLMServer, claude: anthropic.Anthropic
) -> None:
    server.script("alpha", [Text("first")])
    server.script("alp", [Text("second")])
    server.script("beta", [Text("beta")])
    assert text_of(ask(claude, [user("alpha task")])) == "first"  # first registered wins
    later = [user("plain task"), assistant("x"), user("now beta")]
    assert text_of(ask(claude, later, stop_sequences=CODE_STOPS)).startswith("Thought: I have")
    assert server.calls("alpha") == 1 and server.calls(None) == 1


def test_fail_first_then_success(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    server.script("flaky", [Text("step0"), Text("ok", fail_first=[529, 500])])
    convo = [user("flaky"), assistant("step0"), user("go on")]
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        ask(claude, convo)
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as internal:
        ask(claude, convo)
    assert internal.value.status_code == 500
    assert text_of(ask(claude, convo)) == "ok"
    assert text_of(ask(claude, convo)) == "ok"
    assert text_of(ask(claude, [user("flaky")])) == "step0"  # other index: no failures
    assert [r.status for r in server.requests] == [529, 500, 200, 200, 200]


def test_sdk_retries_recover_and_honour_retry_after(server: FakeLLMServer) -> None:
    server.script("retry", [Text("done", fail_first=[429, 529], retry_after=0.01)])
    client = anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=2)
    started = time.monotonic()
    assert text_of(ask(client, [user("retry")])) == "done"
    assert time.monotonic() - started < 0.4  # retry-after-ms beats the SDK's 0.5 s backoff
    assert server.calls("retry") == 3


def test_rate_limit_error_shape(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    server.script("limited", [Text("x", fail_first=[429])])
    with pytest.raises(anthropic.RateLimitError) as err:
        ask(claude, [user("limited")])
    assert err.value.response.headers["retry-after"] == "1"
    assert err.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_openai_failures(server: FakeLLMServer, gpt: openai.OpenAI) -> None:
    server.script("flaky", [Text("ok", fail_first=[500])])
    with pytest.raises(openai.InternalServerError):
        gpt.chat.completions.create(model="gpt-test", messages=[user("flaky")])
    resp = gpt.chat.completions.create(model="gpt-test", messages=[user("flaky")])
    assert resp.choices[0].message.content == "ok"


# --------------------------------------------------------------------------- validation


def test_bad_or_missing_key_is_401(server: FakeLLMServer) -> None:
    bad = anthropic.Anthropic(base_url=server.base_url, api_key="bad-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError, match="invalid x-api-key"):
        ask(bad, [user("hi")])
    bad_oai = openai.OpenAI(base_url=server.openai_base_url, api_key="bad-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad_oai.chat.completions.create(model="gpt-test", messages=[user("hi")])
    assert err.value.code == "invalid_api_key"

    body = {"model": MODEL, "max_tokens": 10, "messages": [user("hi")]}
    raw = httpx.post(server.base_url + "/v1/messages", json=body)
    assert raw.status_code == 401
    assert raw.json()["error"]["type"] == "authentication_error"
    ok = httpx.post(server.base_url + "/v1/messages", json=body, headers={"x-api-key": "k"})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("messages", "extra", "needle"),
    [
        ([user("hi"), assistant("prefill")], {}, "prefill"),
        ([{"role": "system", "content": "s"}, user("hi")], {}, "top-level `system`"),
        ([user("hi")], {"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ([user("a"), user("b")], {}, "alternate"),
        ([assistant("a"), user("b")], {}, "first message"),
    ],
)
def test_invalid_requests_are_400(
    claude: anthropic.Anthropic, messages: list[dict], extra: dict, needle: str
) -> None:
    with pytest.raises(anthropic.BadRequestError, match=needle) as err:
        ask(claude, messages, **extra)
    assert err.value.body["type"] == "error"  # type: ignore[index]
    assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_adaptive_thinking_is_accepted(claude: anthropic.Anthropic) -> None:
    ask(claude, [user("hi")], thinking={"type": "adaptive"})


# --------------------------------------------------------------------------- thinking & streaming


def test_thinking_block_precedes_text(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    server.script("ponder", [Text("answer", thinking="let me think")])
    msg = ask(claude, [user("ponder")])
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "let me think"  # type: ignore[union-attr]
    assert msg.content[0].signature  # type: ignore[union-attr]
    assert text_of(msg) == "answer"
    assert msg.usage.output_tokens == count_tokens("answer")

    with claude.messages.stream(model=MODEL, max_tokens=99, messages=[user("ponder")]) as stream:
        streamed = stream.get_final_message()
    assert [b.type for b in streamed.content] == ["thinking", "text"]
    assert text_of(streamed) == "answer"


def test_streaming(server: FakeLLMServer, claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    reply = "A fairly long reply that will arrive in several SSE deltas. STOP here"
    server.script("stream", [Text(reply)])
    with claude.messages.stream(
        model=MODEL, max_tokens=99, messages=[user("stream")], stop_sequences=["STOP"]
    ) as stream:
        pieces = list(stream.text_stream)
        msg = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == reply[: reply.index("STOP")]
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "STOP")
    assert msg.usage.output_tokens == count_tokens("".join(pieces))

    chunks = list(
        gpt.chat.completions.create(
            model="gpt-test",
            messages=[user("stream")],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == count_tokens(
        reply
    )
    assert all(r.stream for r in server.requests)


# --------------------------------------------------------------------------- timing


def test_latency_and_delay_are_applied() -> None:
    with FakeLLMServer(latency_ms=120) as srv:
        srv.script("slow", [Text("a"), Text("b", delay_ms=100)])
        client = anthropic.Anthropic(base_url=srv.base_url, api_key="test", max_retries=0)
        started = time.monotonic()
        ask(client, [user("slow")])
        first = time.monotonic() - started
        started = time.monotonic()
        ask(client, [user("slow"), assistant("a"), user("more")])
        second = time.monotonic() - started
    assert 0.12 <= first < 1.0
    assert 0.22 <= second < 1.2


def test_hang_makes_the_client_time_out(server: FakeLLMServer) -> None:
    server.script("stuck", [Hang(5)])
    client = anthropic.Anthropic(base_url=server.base_url, api_key="t", max_retries=0, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        ask(client, [user("stuck")])
    assert time.monotonic() - started < 2
    assert server.calls("stuck") == 1  # logged as soon as it arrived


def test_keep_alive_and_no_nagle(server: FakeLLMServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    body = json.dumps({"model": MODEL, "max_tokens": 9, "messages": [user("hi")]})
    headers = {"x-api-key": "k", "content-type": "application/json"}
    ports = set()
    for _ in range(3):  # the same socket serves every request
        conn.request("POST", "/v1/messages", body=body, headers=headers)
        resp = conn.getresponse()
        assert resp.version == 11 and resp.getheader("Connection") is None
        assert resp.status == 200 and json.loads(resp.read())["type"] == "message"
        assert conn.sock is not None
        ports.add(conn.sock.getsockname()[1])
    assert len(ports) == 1
    (served,) = [c for c in server._conns if c.transport.get_extra_info("peername")[1] in ports]
    sock = served.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    conn.close()


def test_chunked_and_pipelined_requests_are_answered_in_order(server: FakeLLMServer) -> None:
    server.script("first", [Text("one")])
    server.script("second", [Text("two")])
    bodies = [
        json.dumps({"model": MODEL, "max_tokens": 9, "messages": [user(word)]}).encode()
        for word in ("first", "second")
    ]
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part) for part in (bodies[0][:7], bodies[0][7:])
    )
    wire = (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(bodies[1]), bodies[1])
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for k in range(0, len(wire), 50):  # in pieces, as a slow network delivers them
            sock.sendall(wire[k : k + 50])
        received = b""
        while chunk := sock.recv(65536):  # the second answer closes the connection
            received += chunk
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert [a.split(b" ", 1)[0] for a in answers] == [b"200", b"200"]
    texts = [json.loads(a.split(b"\r\n\r\n", 1)[1])["content"][0]["text"] for a in answers]
    assert texts == ["one", "two"]


def test_a_malformed_request_gets_a_400_and_the_connection_closes(server: FakeLLMServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert "malformed request line" in received.decode()


# --------------------------------------------------------------------------- control plane


def test_http_control_endpoints(server: FakeLLMServer, claude: anthropic.Anthropic) -> None:
    remote_script(server.base_url, "remote", [Text("via http", fail_first=[500], delay_ms=1)])
    with pytest.raises(anthropic.InternalServerError):
        ask(claude, [user("remote")])
    assert text_of(ask(claude, [user("remote")])) == "via http"
    log = remote_log(server.base_url)
    assert [(r["keyword"], r["status"]) for r in log] == [("remote", 500), ("remote", 200)]
    assert "body" not in log[0]
    assert remote_log(server.base_url, full=True)[1]["body"]["messages"] == [user("remote")]
    remote_reset(server.base_url)
    assert remote_log(server.base_url) == [] and server.calls("remote") == 0
    bad = httpx.post(server.base_url + "/_script", json={"keyword": "k", "replies": [{"txt": 1}]})
    assert bad.status_code == 400


def test_model_listing(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    assert claude.models.list().data[0].type == "model"
    assert gpt.models.list().data[0].object == "model"


def test_cli_subprocess_prints_url_and_serves() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "tests.fakes.llm_server", "--port", "0", "--latency-ms", "20"]
    with subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            remote_script(base_url, "cli", [final("'from cli'")])
            client = anthropic.Anthropic(base_url=base_url, api_key="test", max_retries=0)
            msg = ask(client, [user("cli task")], stop_sequences=CODE_STOPS)
            assert text_of(msg) == "Thought: I have the answer.\n<code>\nfinal_answer('from cli')\n"
            assert [r["keyword"] for r in remote_log(base_url)] == ["cli"]
        finally:
            proc.terminate()
        assert proc.wait(timeout=5) == 0


def test_smolagents_codeagent_runs_the_default_script(server: FakeLLMServer) -> None:
    from smolagents import CodeAgent, OpenAIModel

    model = OpenAIModel(model_id="gpt-4o", api_base=server.openai_base_url, api_key="test")
    agent = CodeAgent(tools=[], model=model, verbosity_level=0)
    assert agent.run("What is 2 + 2?") == "4"
    assert [(r.index, r.stop_reason) for r in server.requests] == [
        (0, "stop_sequence"),
        (1, "stop_sequence"),
    ]


def test_a_scripted_fault_may_use_a_status_without_a_standard_reason(server: FakeLLMServer) -> None:
    server.script("odd status", [Text("fine", fail_first=[599])])
    body = {"model": MODEL, "max_tokens": 9, "messages": [user("odd status")]}
    headers = {"x-api-key": "k"}
    first = httpx.post(server.base_url + "/v1/messages", json=body, headers=headers)
    assert first.status_code == 599 and first.reason_phrase == "Unknown"
    second = httpx.post(server.base_url + "/v1/messages", json=body, headers=headers)
    assert second.status_code == 200 and second.json()["content"][0]["text"] == "fine"
