"""Our smolagents models against the fake provider, through the official SDKs."""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

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
from agent_platform.runtime.providers import (
    Interrupted,
    Providers,
    RetryPolicy,
    anthropic_tracing_option,
    split_model_name,
    to_anthropic_messages,
)
from tests.fakes.llm_server import FakeLLMServer, Text


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
    llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY", raising=False)
    pool = Providers(settings(llm))._anthropic
    assert pool is not None and pool.configured.open_telemetry["traces"]["enabled"] is False

    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "true")
    assert anthropic_tracing_option() == {}  # the SDK reads the variable itself
    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY")

    class Configured(trace.TracerProvider):  # e.g. what `opentelemetry-instrument` installs
        def get_tracer(self, *args: object, **kwargs: object) -> trace.Tracer:
            return trace.NoOpTracer()

    monkeypatch.setattr(trace, "get_tracer_provider", Configured)
    pool = Providers(settings(llm))._anthropic
    assert pool is not None and pool.configured.open_telemetry["traces"]["enabled"] is True


def test_anthropic_call_usage_and_stop_sequences(llm: FakeLLMServer) -> None:
    kw = uuid.uuid4().hex
    llm.script(
        kw, [Text("Thought: go\n<code>\nprint(1)\n</code>\nObservation: leaked", thinking="hmm")]
    )
    model = Providers(settings(llm)).build("claude-sonnet-5-5", threading.Event())
    out = model.generate(conversation(kw), stop_sequences=["Observation:", "</code>"])
    assert out.content == "Thought: go\n<code>\nprint(1)\n"  # thinking block ignored, cut at stop
    assert out.token_usage is not None and out.token_usage.input_tokens > 0
    request = llm.requests[-1].body
    assert request["system"] == "You are helpful."
    assert request["messages"][-1]["role"] == "user"
    assert "temperature" not in request and "thinking" not in request


def test_malformed_reply_is_a_provider_error(llm: FakeLLMServer) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("", raw_body='{"type": "message", "content": "not blocks"}')])
    model = Providers(settings(llm)).build("claude-sonnet-5-5", threading.Event())
    with pytest.raises(ProviderError, match="malformed response") as caught:
        model.generate(conversation(kw))
    assert caught.value.provider == "anthropic" and not caught.value.retryable


def test_adaptive_thinking_when_enabled(llm: FakeLLMServer) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("ok")])
    model = Providers(settings(llm, anthropic_thinking_effort="high")).build(
        "claude-sonnet-5-5", threading.Event()
    )
    assert model.generate(conversation(kw)).content == "ok"
    body = llm.requests[-1].body
    assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": "high"}


def test_retryable_errors_are_retried_then_succeed(llm: FakeLLMServer) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("fine", fail_first=[529, 500, 429], retry_after=0.01)])
    providers = Providers(settings(llm, max_retries=3))
    model = providers.build("claude-sonnet-5-5", threading.Event())
    model.retry_policy = RetryPolicy(max_retries=3, base_s=0.01, cap_s=0.05)
    assert model.generate(conversation(kw)).content == "fine"
    assert model.take_retries() == 3 and model.take_retries() == 0
    assert llm.calls(kw) == 4


def test_retries_exhausted_raise_with_reason(llm: FakeLLMServer) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("never", fail_first=[529, 529, 529])])
    model = Providers(settings(llm, max_retries=1)).build("claude-sonnet-5-5", threading.Event())
    model.retry_policy = RetryPolicy(max_retries=1, base_s=0.01, cap_s=0.02)
    with pytest.raises(ProviderError) as info:
        model.generate(conversation(kw))
    assert info.value.status == 529 and "529" in info.value.message
    assert llm.calls(kw) == 2


def test_auth_error_is_not_retried(llm: FakeLLMServer) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("x")])
    model = Providers(settings(llm, anthropic_api_key="bad-key")).build(
        "claude-sonnet-5-5", threading.Event()
    )
    with pytest.raises(ProviderError) as info:
        model.generate(conversation(kw))
    assert info.value.status == 401 and not info.value.retryable
    assert llm.calls(kw) == 1


def test_stop_interrupts_a_backoff_sleep(llm: FakeLLMServer) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("x", fail_first=[529] * 5, retry_after=30)])
    stop = threading.Event()
    model = Providers(settings(llm)).build("claude-sonnet-5-5", stop)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        model.generate(conversation(kw))
    assert time.monotonic() - started < 5


def test_openai_compatible_endpoint(llm: FakeLLMServer) -> None:
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("from openai")])
    model = Providers(settings(llm)).build("gpt-fake-1", threading.Event())
    out = model.generate(conversation(kw))
    assert out.content == "from openai" and out.token_usage is not None
    assert llm.requests[-1].protocol == "openai"


def test_routing_and_configuration_errors(llm: FakeLLMServer) -> None:
    assert split_model_name("claude-x") == ("anthropic", "claude-x")
    assert split_model_name("openai/claude-x") == ("openai", "claude-x")
    assert split_model_name("llama3.2") == ("openai", "llama3.2")
    only_anthropic = Providers(settings(llm, openai_base_url=None))
    with pytest.raises(ProviderNotConfigured, match="OPENAI_BASE_URL"):
        only_anthropic.check("llama3.2")
    nothing = Providers(Settings(_env_file=None))  # type: ignore[call-arg]
    with pytest.raises(ProviderNotConfigured, match="ANTHROPIC_API_KEY"):
        nothing.check("claude-sonnet-5-5")
    assert "no LLM provider" in nothing.startup_warnings()[0]


def test_deprecated_model_is_announced_at_startup(llm: FakeLLMServer) -> None:
    notes = Providers(settings(llm, default_model="claude-sonnet-4-5")).startup_warnings()
    assert any("claude-sonnet-4-5" in n and "2026" in n for n in notes)


def test_each_call_in_flight_has_its_own_client_copy(llm: FakeLLMServer) -> None:
    """One client shared by every agent thread serializes them on its connection pool's
    lock: each call in flight borrows a copy of the configured client instead, the most
    recently used first (its connection is the one still warm)."""
    providers = Providers(settings(llm, provider_timeout_s=42))
    pools = (providers._anthropic, providers._openai)
    assert pools[0] is not None and pools[1] is not None
    lent: list[object] = []
    for pool in pools:
        with pool.lend() as first:
            with pool.lend() as second:
                assert first is not second  # two calls in flight, two connection pools
            with pool.lend() as third:
                assert third is second  # the warmest copy first
        lent += [first, second]
    for client in lent[:2]:  # the configured client's settings, copied
        assert isinstance(client, anthropic.Anthropic)
        assert client.api_key == "test" and str(client.base_url).startswith(llm.base_url)
        assert client.max_retries == 0 and client.timeout == 42
        assert client.open_telemetry["traces"]["enabled"] is False
    for client in lent[2:]:
        assert isinstance(client, openai.OpenAI)
        assert str(client.base_url).startswith(llm.openai_base_url)
        assert client.max_retries == 0 and client.timeout == 42

    answered: list[bool] = []

    def agent_thread() -> None:
        for model_name in ("claude-sonnet-5-5", "gpt-fake-1", "claude-sonnet-5-5"):
            kw = uuid.uuid4().hex
            llm.script(kw, [Text(f"answer {kw}")])
            model = providers.build(model_name, threading.Event())
            answered.append(model.generate(conversation(kw)).content == f"answer {kw}")

    threads = [threading.Thread(target=agent_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answered == [True] * 12

    providers.close()
    assert all(client.is_closed() for client in lent)  # type: ignore[attr-defined]
    kw = uuid.uuid4().hex
    llm.script(kw, [Text("after close")])
    model = providers.build("gpt-fake-1", threading.Event())
    assert model.generate(conversation(kw)).content == "after close"  # a new copy


def test_a_provider_behind_tls_with_a_private_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client copies verify TLS as the SDKs' own clients do: with the CA an operator
    names in SSL_CERT_FILE, and not without it."""
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
        untrusted = Providers(settings(tls_llm, max_retries=0))
        with pytest.raises(ProviderError) as caught:
            untrusted.build("claude-sonnet-5-5", threading.Event()).generate(conversation(kw))
        assert caught.value.retryable  # a connection error, not an answer
        assert not tls_llm.requests  # the handshake failed: no request reached the provider

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusted = Providers(settings(tls_llm, max_retries=0))
        model = trusted.build("claude-sonnet-5-5", threading.Event())
        assert model.generate(conversation(kw)).content == "over tls"
