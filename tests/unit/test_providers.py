"""Our smolagents models against the fake provider, through the official SDKs."""

from __future__ import annotations

import asyncio
import inspect
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry import trace
from smolagents.models import (
    ChatMessage,
    MessageRole,
    get_clean_message_list,
    tool_role_conversions,
)

from agent_platform.config import Settings
from agent_platform.errors import ProviderError, ProviderNotConfigured
from agent_platform.runtime import provider_loop
from agent_platform.runtime.providers import (
    Interrupted,
    PlatformModel,
    Providers,
    RetryPolicy,
    anthropic_tracing_option,
    split_model_name,
    to_anthropic_messages,
)
from tests.fakes.llm_server import FakeLLMServer, Hang, Text

ProvidersOf = Callable[[Settings], Providers]


@pytest.fixture
def providers_of() -> Iterator[ProvidersOf]:
    """`Providers` for a test, closed after it (their loop thread and connections)."""
    made: list[Providers] = []

    def make(config: Settings) -> Providers:
        made.append(Providers(config))
        return made[-1]

    yield make
    for providers in made:
        providers.close()


def msg(role: MessageRole, text: str) -> ChatMessage:
    return ChatMessage(role=role, content=[{"type": "text", "text": text}])


def settings(llm: FakeLLMServer, **kw: object) -> Settings:
    base: dict[str, object] = {
        "anthropic_api_key": "test",
        "anthropic_base_url": llm.base_url,
        "openai_base_url": llm.openai_base_url,
        "allowed_models": "gpt-fake-1",
    }
    base.update(kw)
    return Settings(_env_file=None, **base)  # type: ignore[arg-type]


def conversation(kw: str) -> list[ChatMessage]:
    return [
        msg(MessageRole.SYSTEM, "You are helpful."),
        msg(MessageRole.USER, f"{kw} task"),
        msg(MessageRole.ASSISTANT, "Thought: x"),
        msg(MessageRole.TOOL_CALL, "Calling tools: [...]"),
        msg(MessageRole.TOOL_RESPONSE, "Observation: 1"),
    ]


def test_anthropic_roles_system_merge_and_no_prefill() -> None:
    system, turns = to_anthropic_messages(
        [
            {"role": MessageRole.SYSTEM, "content": "sys"},
            {"role": MessageRole.ASSISTANT, "content": "a"},
            {"role": MessageRole.ASSISTANT, "content": "b"},
        ]
    )
    assert system == "sys"
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]  # never ends on assistant
    assert turns[1]["content"] == "a\nb"


def test_anthropic_turns_read_smolagents_messages_as_its_cleaner_would() -> None:
    """Read straight from ChatMessages (no deep copy), the turns equal those made from
    smolagents' own cleaned list: tool calls are the assistant's, observations the user's."""
    messages = [
        *conversation("x"),
        msg(MessageRole.USER, "Now go"),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            content=[{"type": "text", "text": "part 1"}, {"type": "text", "text": "part 2"}],
        ),
    ]
    cleaned = get_clean_message_list(
        messages[:-1], role_conversions=tool_role_conversions, flatten_messages_as_text=True
    )
    assert to_anthropic_messages(messages[:-1]) == to_anthropic_messages(cleaned)
    system, turns = to_anthropic_messages(messages)
    assert system == "You are helpful."
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant", "user"]
    assert turns[1]["content"] == "Thought: x\nCalling tools: [...]"
    assert turns[2]["content"] == "Observation: 1\nNow go"
    assert turns[3]["content"] == "part 1\npart 2"  # every text part, not only the first


def test_sdk_tracing_is_off_unless_a_tracer_provider_or_the_env_asks(
    llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, providers_of: ProvidersOf
) -> None:
    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY", raising=False)
    client = providers_of(settings(llm)).clients().anthropic
    assert client is not None and client.open_telemetry["traces"]["enabled"] is False

    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "true")
    assert anthropic_tracing_option() == {}  # the SDK reads the variable itself
    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY")

    class Configured(trace.TracerProvider):  # e.g. what `opentelemetry-instrument` installs
        def get_tracer(self, *args: object, **kwargs: object) -> trace.Tracer:
            return trace.NoOpTracer()

    monkeypatch.setattr(trace, "get_tracer_provider", Configured)
    client = providers_of(settings(llm)).clients().anthropic
    assert client is not None and client.open_telemetry["traces"]["enabled"] is True


def test_anthropic_call_usage_and_stop_sequences(
    llm: FakeLLMServer, providers_of: ProvidersOf
) -> None:
    kw = uuid.uuid4().hex
    llm.script(
        kw, [Text("Thought: go\n<code>\nprint(1)\n</code>\nObservation: leaked", thinking="hmm")]
    )
    model = providers_of(settings(llm)).build("claude-sonnet-5-5", threading.Event())
    out = model.generate(conversation(kw), stop_sequences=["Observation:", "</code>"])
    assert out.content == "Thought: go\n<code>\nprint(1)\n"  # thinking block ignored, cut at stop
    assert out.token_usage is not None and out.token_usage.input_tokens > 0
    request = llm.requests[-1].body
    assert request["system"] == "You are helpful."
    assert request["messages"][-1]["role"] == "user"
    assert "temperature" not in request and "thinking" not in request


@pytest.mark.parametrize(
    "raw_body", ['{"type": "message", "content": "not blocks"}', "not JSON", '["a list"]']
)
def test_malformed_reply_is_a_provider_error(
    llm: FakeLLMServer, providers_of: ProvidersOf, raw_body: str
) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("", raw_body=raw_body)])
    model = providers_of(settings(llm)).build("claude-sonnet-5-5", threading.Event())
    with pytest.raises(ProviderError, match="malformed response") as caught:
        model.generate(conversation(kw))
    assert caught.value.provider == "anthropic" and not caught.value.retryable


def test_adaptive_thinking_when_enabled(llm: FakeLLMServer, providers_of: ProvidersOf) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("ok")])
    model = providers_of(settings(llm, anthropic_thinking_effort="high")).build(
        "claude-sonnet-5-5", threading.Event()
    )
    assert model.generate(conversation(kw)).content == "ok"
    body = llm.requests[-1].body
    assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": "high"}


def test_retryable_errors_are_retried_then_succeed(
    llm: FakeLLMServer, providers_of: ProvidersOf
) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("fine", fail_first=[529, 500, 429], retry_after=0.01)])
    providers = providers_of(settings(llm, max_retries=3))
    model = providers.build("claude-sonnet-5-5", threading.Event())
    model.retry_policy = RetryPolicy(max_retries=3, base_s=0.01, cap_s=0.05)
    assert model.generate(conversation(kw)).content == "fine"
    assert model.take_retries() == 3 and model.take_retries() == 0
    assert llm.calls(kw) == 4


def test_retries_exhausted_raise_with_reason(llm: FakeLLMServer, providers_of: ProvidersOf) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("never", fail_first=[529, 529, 529])])
    model = providers_of(settings(llm, max_retries=1)).build("claude-sonnet-5-5", threading.Event())
    model.retry_policy = RetryPolicy(max_retries=1, base_s=0.01, cap_s=0.02)
    with pytest.raises(ProviderError) as info:
        model.generate(conversation(kw))
    assert info.value.status == 529 and "529" in info.value.message
    assert llm.calls(kw) == 2


def test_auth_error_is_not_retried(llm: FakeLLMServer, providers_of: ProvidersOf) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("x")])
    model = providers_of(settings(llm, anthropic_api_key="bad-key")).build(
        "claude-sonnet-5-5", threading.Event()
    )
    with pytest.raises(ProviderError) as info:
        model.generate(conversation(kw))
    assert info.value.status == 401 and not info.value.retryable
    assert llm.calls(kw) == 1


def test_stop_interrupts_a_backoff_sleep(llm: FakeLLMServer, providers_of: ProvidersOf) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("x", fail_first=[529] * 5, retry_after=30)])
    stop = threading.Event()
    model = providers_of(settings(llm)).build("claude-sonnet-5-5", stop)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        model.generate(conversation(kw))
    assert time.monotonic() - started < 5


def test_openai_compatible_endpoint(llm: FakeLLMServer, providers_of: ProvidersOf) -> None:
    """Chat Completions through the SDK: the answer and its token counts, the stop sequences
    sent, a provider error as the SDK's typed error translated, a malformed reply."""
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("from openai"), Text("", fail_first=[429]), Text("", raw_body="[]")])
    model = providers_of(settings(llm, max_retries=0)).build("gpt-fake-1", threading.Event())
    turns = [msg(MessageRole.SYSTEM, "You are helpful."), msg(MessageRole.USER, f"{kw} task")]
    out = model.generate(turns, stop_sequences=["</code>"])
    served = llm.requests[-1]
    assert out.content == "from openai" and served.protocol == "openai"
    assert served.body["stop"] == ["</code>"]
    assert out.token_usage is not None
    assert (out.token_usage.input_tokens, out.token_usage.output_tokens) == (
        served.input_tokens,
        served.output_tokens,
    )
    turns += [msg(MessageRole.ASSISTANT, "from openai"), msg(MessageRole.USER, "again")]
    with pytest.raises(ProviderError) as caught:
        model.generate(turns)
    assert caught.value.provider == "openai" and caught.value.retryable
    turns += [msg(MessageRole.ASSISTANT, "..."), msg(MessageRole.USER, "and again")]
    with pytest.raises(ProviderError, match="malformed response") as caught:
        model.generate(turns)
    assert not caught.value.retryable


def test_routing_and_configuration_errors(llm: FakeLLMServer, providers_of: ProvidersOf) -> None:
    assert split_model_name("claude-x") == ("anthropic", "claude-x")
    assert split_model_name("openai/claude-x") == ("openai", "claude-x")
    assert split_model_name("llama3.2") == ("openai", "llama3.2")
    only_anthropic = providers_of(settings(llm, openai_base_url=None))
    with pytest.raises(ProviderNotConfigured, match="OPENAI_BASE_URL"):
        only_anthropic.check("llama3.2")
    nothing = Providers(Settings(_env_file=None))  # type: ignore[call-arg]
    with pytest.raises(ProviderNotConfigured, match="ANTHROPIC_API_KEY"):
        nothing.check("claude-sonnet-5-5")
    assert "no LLM provider" in nothing.startup_warnings()[0]


def test_deprecated_model_is_announced_at_startup(
    llm: FakeLLMServer, providers_of: ProvidersOf
) -> None:
    notes = providers_of(settings(llm, default_model="claude-sonnet-4-5")).startup_warnings()
    assert any("claude-sonnet-4-5" in n and "2026" in n for n in notes)


def test_agent_threads_call_through_one_loop_and_one_client_per_provider(
    llm: FakeLLMServer, providers_of: ProvidersOf
) -> None:
    """Every agent thread's call runs on the one provider loop thread, through the one async
    client of its provider, configured as the settings say; `close` closes them and stops
    the thread, and a model built afterwards gets new ones."""
    providers = providers_of(settings(llm, provider_timeout_s=42))
    clients = providers.clients()
    assert clients is providers.clients() and not clients.loop.running  # started by a call
    assert isinstance(clients.anthropic, anthropic.AsyncAnthropic)
    assert clients.anthropic.api_key == "test"
    assert str(clients.anthropic.base_url).startswith(llm.base_url)
    assert clients.anthropic.max_retries == 0 and clients.anthropic.timeout == 42
    assert isinstance(clients.openai, openai.AsyncOpenAI)
    assert str(clients.openai.base_url).startswith(llm.openai_base_url)
    assert clients.openai.max_retries == 0 and clients.openai.timeout == 42

    answered: list[bool] = []
    sent_from: set[str] = set()
    seen = {"anthropic": clients.anthropic, "openai": clients.openai}
    submit = clients.loop.submit

    def submit_noting_the_thread(call: Any) -> Any:
        async def noted() -> Any:
            sent_from.add(threading.current_thread().name)
            return await call

        return submit(noted())

    clients.loop.submit = submit_noting_the_thread  # type: ignore[method-assign]

    def agent_thread() -> None:
        for model_name in ("claude-sonnet-5-5", "gpt-fake-1", "claude-sonnet-5-5"):
            kw = uuid.uuid4().hex
            llm.script(kw, [Text(f"answer {kw}")])
            model = providers.build(model_name, threading.Event())
            assert model.client is seen[model.provider]  # type: ignore[attr-defined]
            assert model.loop is clients.loop
            answered.append(model.generate(conversation(kw)).content == f"answer {kw}")

    threads = [threading.Thread(target=agent_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answered == [True] * 12
    assert sent_from == {"provider-io"}
    assert clients.loop.running

    del clients.loop.submit
    providers.close()
    assert not clients.loop.running
    late = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):  # a model of before `close` is done
        clients.loop.submit(late)
    assert inspect.getcoroutinestate(late) == inspect.CORO_CLOSED
    assert clients.anthropic.is_closed() and clients.openai.is_closed()
    assert not any(t.name == "provider-io" for t in threading.enumerate())
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("after close")])
    model = providers.build("gpt-fake-1", threading.Event())
    assert model.client is not clients.openai  # type: ignore[attr-defined]
    assert model.generate(conversation(kw)).content == "after close"
    providers.close()


def test_a_provider_that_does_not_answer_in_time_is_a_retryable_timeout(
    providers_of: ProvidersOf,
) -> None:
    with FakeLLMServer() as slow:
        kw = uuid.uuid4().hex
        slow.script(kw, [Hang(5)])
        providers = providers_of(settings(slow, provider_timeout_s=0.3, max_retries=0))
        for model_name, label in (("claude-sonnet-5-5", "Anthropic"), ("gpt-fake-1", "OpenAI")):
            model = providers.build(model_name, threading.Event())
            started = time.monotonic()
            with pytest.raises(ProviderError, match=f"{label}.* timed out") as caught:
                model.generate(conversation(kw))
            assert 0.3 <= time.monotonic() - started < 2
            assert caught.value.retryable


def test_a_provider_nobody_answers_at_is_a_retryable_connection_error(
    providers_of: ProvidersOf,
) -> None:
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
    config = Settings(
        _env_file=None,  # type: ignore[call-arg]
        anthropic_api_key="test",
        anthropic_base_url=url,
        openai_base_url=url + "/v1",
        allowed_models="gpt-fake-1",
        max_retries=0,
    )
    providers = providers_of(config)
    for model_name, label in (("claude-sonnet-5-5", "Anthropic"), ("gpt-fake-1", "OpenAI")):
        with pytest.raises(ProviderError, match=f"{label}.* could not be reached") as caught:
            providers.build(model_name, threading.Event()).generate(conversation("x"))
        assert caught.value.retryable and caught.value.status is None


def stop_and_interrupt(stop: threading.Event, model: PlatformModel) -> None:
    """What the agent's stop hook does on a cancel or a timeout."""
    stop.set()
    model.interrupt()


def test_stop_interrupts_a_call_in_flight(providers_of: ProvidersOf) -> None:
    """A cancel or timeout does not wait for the provider: the call ends at once and its
    connection is closed (the provider stops working on it; no thread stays blocked)."""
    with FakeLLMServer() as slow:
        kw = uuid.uuid4().hex
        slow.script(kw, [Hang(30)])
        providers = providers_of(settings(slow))
        for model_name in ("claude-sonnet-5-5", "gpt-fake-1"):
            stop = threading.Event()
            model = providers.build(model_name, stop)
            threading.Timer(0.3, stop_and_interrupt, args=(stop, model)).start()
            started = time.monotonic()
            with pytest.raises(Interrupted, match="during the model call"):
                model.generate(conversation(kw))
            assert 0.3 <= time.monotonic() - started < 2
            deadline = time.monotonic() + 2
            while slow.calls_in_progress and time.monotonic() < deadline:
                time.sleep(0.01)
            assert slow.calls_in_progress == 0

        stop = threading.Event()
        stop.set()  # set before the call: the next call is never sent
        calls = len(slow.requests)
        with pytest.raises(Interrupted):
            providers.build("claude-sonnet-5-5", stop).generate(conversation(kw))
        assert len(slow.requests) == calls


def test_a_provider_behind_tls_with_a_private_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, providers_of: ProvidersOf
) -> None:
    """The clients verify TLS as the SDKs' defaults do: with the CA an operator names in
    SSL_CERT_FILE, and not without it."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    with FakeLLMServer(tls=server_tls) as tls_llm:
        assert tls_llm.base_url.startswith("https://")
        kw = uuid.uuid4().hex
        tls_llm.script(kw, [Text("over tls")])
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        untrusted = providers_of(settings(tls_llm, max_retries=0))
        with pytest.raises(ProviderError) as caught:
            untrusted.build("claude-sonnet-5-5", threading.Event()).generate(conversation(kw))
        assert caught.value.retryable  # a connection error, not an answer
        assert not tls_llm.requests  # the handshake failed: no request reached the provider

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusted = providers_of(settings(tls_llm, max_retries=0))
        model = trusted.build("claude-sonnet-5-5", threading.Event())
        assert model.generate(conversation(kw)).content == "over tls"


def test_closing_goes_on_when_a_client_does_not_close(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Shutting down, a closer that fails or hangs is logged, the next one still runs and
    the thread stops: what follows in the process's shutdown (the bus, the database) must
    not be skipped because one provider's connections would not close."""
    monkeypatch.setattr(provider_loop, "CLOSE_TIMEOUT_S", 0.3)
    loop = provider_loop.ProviderLoop()
    assert loop.submit(asyncio.sleep(0, result=1)).result(5) == 1
    closed: list[str] = []

    async def fails() -> None:
        closed.append("fails")
        raise OSError("connection reset while closing")

    async def hangs() -> None:
        closed.append("hangs")
        await asyncio.sleep(60)

    with caplog.at_level("WARNING", logger=provider_loop.__name__):
        loop.close(fails)
    assert closed == ["fails"] and not loop.running
    assert "connection reset while closing" in caplog.text

    loop = provider_loop.ProviderLoop()
    loop.submit(asyncio.sleep(0)).result(5)
    started = time.monotonic()
    loop.close(hangs)
    assert closed == ["fails", "hangs"] and time.monotonic() - started < 5
    assert not any(t.name == "provider-io" and t.is_alive() for t in threading.enumerate())
