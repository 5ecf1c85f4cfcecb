"""A local fake LLM provider speaking the Anthropic Messages and OpenAI Chat Completions wires.

Tests and benchmarks replace the LLM only at its HTTP boundary: the real ``anthropic`` / ``openai``
SDKs (and everything above them: smolagents' ``CodeAgent``, our runtime) run unchanged against
this server.

Design points:

* **Stateless scripting.** The reply is chosen from the conversation itself: the *script* is the
  first registered keyword contained in the first user turn, the *index* into its replies is the
  number of assistant turns already in the request (consecutive same-role messages merged). Any
  number of worker processes, retries and restarts therefore see consistent behaviour. Past the
  end of a script the last reply repeats. With no matching keyword a default two-step CodeAgent
  exchange (``2 + 2`` then ``final_answer``) is used.
* **Faults** are the only state: ``Text(..., fail_first=[529, 500])`` answers the first two calls
  for that keyword+index with those statuses (thread-safe counter), then the text.
* **Token usage** is a pure function so tests can assert sums: ``count_tokens(text) = len(text) //
  4 + 1``. ``input_tokens`` is ``count_tokens`` of the concatenated text of the system prompt and
  every message (text blocks and tool results; images etc. ignored); ``output_tokens`` is
  ``count_tokens`` of the returned text (after stop-sequence/max-tokens cuts; thinking excluded).
* **Stop sequences** are applied like the real APIs (cut before the earliest match, not included),
  which matters because the CodeAgent stops on ``</code>`` and re-appends it itself.
* Request validation mirrors what the real Anthropic API rejects and our client must get right
  (auth, assistant prefill, legacy ``thinking.type=enabled``, ``system`` role inside messages,
  non-alternating roles), with the real error shapes.

Usage::

    with FakeLLMServer(latency_ms=20) as srv:
        srv.script("weather", [code("print(get_weather('Paris'))"), final("'sunny'")])
        client = anthropic.Anthropic(base_url=srv.base_url, api_key="test")
        ...
        assert srv.calls("weather") == 2

Standalone (benchmarks, multi-process tests); the base URL is the first stdout line::

    python -m tests.fakes.llm_server --port 0 --latency-ms 200

It can be scripted over HTTP with ``POST /_script`` (see ``remote_script``), and inspected with
``GET /_log[?full=1]`` (see ``remote_log``) and ``POST /_reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "DEFAULT_REPLIES",
    "FakeLLMServer",
    "Hang",
    "Reply",
    "RequestRecord",
    "Text",
    "code",
    "count_tokens",
    "final",
    "main",
    "remote_log",
    "remote_reset",
    "remote_script",
    "reply_from_dict",
    "reply_to_dict",
]

BAD_KEY = "bad-key"
"""The API key the server rejects with 401, on both wires."""

MODELS = ("claude-fake-1", "gpt-fake-1")
"""Model ids listed by ``GET /v1/models`` (any requested model id is accepted and echoed)."""


def count_tokens(text: str) -> int:
    """Deterministic fake token count, ``len(text) // 4 + 1``, so tests can assert usage sums."""
    return len(text) // 4 + 1


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class Text:
    """One scripted model reply.

    ``delay_ms`` adds to the server's latency for this reply; ``thinking`` prepends an Anthropic
    thinking block (ignored on the OpenAI wire); ``fail_first`` lists HTTP statuses answered by the
    first calls for this keyword+index before the text is returned; ``retry_after`` (seconds) is
    sent as ``retry-after``/``retry-after-ms`` on those failures (429 defaults to 1 s);
    ``hang_s`` sleeps that long before answering (timeout tests; interrupted by ``stop()``);
    ``raw_body`` is answered as is with status 200 instead of a well-formed message.
    """

    text: str
    delay_ms: int = 0
    thinking: str | None = None
    fail_first: Sequence[int] = ()
    retry_after: float | None = None
    hang_s: float = 0.0
    raw_body: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fail_first", tuple(int(s) for s in self.fail_first))


Reply = Text
"""Every reply kind is a ``Text``; ``Hang``/``code``/``final`` are constructors for it."""


def Hang(seconds: float, text: str = "Thought: I was slow.", **kwargs: Any) -> Text:
    """A reply that answers only after ``seconds`` (for client-timeout tests)."""
    return Text(text, hang_s=seconds, **kwargs)


def code(src: str, thought: str = "I will run some code.", **kwargs: Any) -> Text:
    """A CodeAgent step: ``Thought: ...`` followed by a ``<code>`` block running ``src``."""
    return Text(f"Thought: {thought}\n<code>\n{src}\n</code>", **kwargs)


def final(answer_expr: str, thought: str = "I have the answer.", **kwargs: Any) -> Text:
    """A CodeAgent step calling ``final_answer(answer_expr)`` (``answer_expr`` is Python source)."""
    return code(f"final_answer({answer_expr})", thought=thought, **kwargs)


DEFAULT_REPLIES: tuple[Text, ...] = (
    code("result = 2 + 2\nprint(result)", thought="I will compute it."),
    final("str(result)", thought="I have the answer."),
)
"""Used when no script keyword matches: a two-step CodeAgent run answering ``"4"``."""


def reply_to_dict(reply: Text) -> dict[str, Any]:
    """JSON form used by ``POST /_script``."""
    out: dict[str, Any] = {"text": reply.text}
    if reply.delay_ms:
        out["delay_ms"] = reply.delay_ms
    if reply.thinking is not None:
        out["thinking"] = reply.thinking
    if reply.fail_first:
        out["fail_first"] = list(reply.fail_first)
    if reply.retry_after is not None:
        out["retry_after"] = reply.retry_after
    if reply.hang_s:
        out["hang_s"] = reply.hang_s
    return out


def reply_from_dict(data: dict[str, Any]) -> Text:
    """Inverse of ``reply_to_dict``; unknown keys are rejected to catch typos in scripts."""
    allowed = {"text", "delay_ms", "thinking", "fail_first", "retry_after", "hang_s"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown reply fields: {sorted(unknown)}")
    return Text(
        text=str(data.get("text", "")),
        delay_ms=int(data.get("delay_ms", 0)),
        thinking=data.get("thinking"),
        fail_first=data.get("fail_first") or (),
        retry_after=data.get("retry_after"),
        hang_s=float(data.get("hang_s", 0.0)),
    )


# --------------------------------------------------------------------------- conversation helpers


def _content_text(content: Any) -> str:
    """Text of a message ``content`` (string or list of blocks/parts); non-text parts ignored."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                if block.get("type") == "tool_result":
                    parts.append(_content_text(block.get("content")))
                elif isinstance(block.get("text"), str):
                    parts.append(block["text"])
    return "".join(parts)


def _turns(messages: list[Any]) -> list[tuple[str, str]]:
    """Merged ``(role, text)`` turns: system/developer skipped, tool results count as user."""
    turns: list[tuple[str, str]] = []
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role in ("system", "developer"):
            continue
        role = "assistant" if role == "assistant" else "user"
        text = _content_text(msg.get("content"))
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + text)
        else:
            turns.append((role, text))
    return turns


def _input_text(body: dict[str, Any]) -> str:
    """All prompt text of a request: top-level ``system`` then every message, in order."""
    parts = [_content_text(body.get("system"))]
    for msg in body.get("messages") or []:
        if isinstance(msg, dict):
            parts.append(_content_text(msg.get("content")))
    return "".join(parts)


def _apply_stops(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """Cut ``text`` before the earliest stop sequence, like the real APIs (match not included)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        pos = text.find(stop)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, stop)
    if best is None:
        return text, None
    return text[: best[0]], best[1]


def _max_chars(max_tokens: int) -> int:
    """Longest text whose ``count_tokens`` fits in ``max_tokens``."""
    return max(0, 4 * max_tokens - 1)


def _chunks(text: str, size: int = 24) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RequestRecord:
    """One LLM call as seen by the server (``keyword`` is None for the default script)."""

    protocol: str  # "anthropic" | "openai"
    path: str
    model: str | None
    keyword: str | None
    index: int
    status: int
    stream: bool
    input_tokens: int
    output_tokens: int
    stop_reason: str | None
    body: Any
    timestamp: float

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """JSON form for ``GET /_log``; the request body only when ``full``."""
        out = {
            "protocol": self.protocol,
            "path": self.path,
            "model": self.model,
            "keyword": self.keyword,
            "index": self.index,
            "status": self.status,
            "stream": self.stream,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "stop_reason": self.stop_reason,
            "timestamp": self.timestamp,
        }
        if full:
            out["body"] = self.body
        return out


@dataclass
class _Outcome:
    """What a handler decided to answer, before latency is applied."""

    status: int
    payload: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    sleep_s: float = 0.0


class _ApiError(Exception):
    """A validation failure to be answered in the protocol's error shape."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_FAULT_MESSAGES = {
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    503: "Service unavailable",
    529: "Overloaded",
}
_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def _anthropic_error(status: int, message: str) -> dict[str, Any]:
    etype = _ANTHROPIC_ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return {
        "type": "error",
        "error": {"type": etype, "message": message},
        "request_id": f"req_{secrets.token_hex(12)}",
    }


def _openai_error(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    etype, default_code = _OPENAI_ERROR_TYPES.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    return {
        "error": {"message": message, "type": etype, "param": None, "code": code or default_code}
    }


# --------------------------------------------------------------------------- HTTP plumbing

MAX_HEAD = 64 * 1024  # request line + headers
_REASONS = {529: "Overloaded"}


class _Headers(dict[str, str]):
    """Request headers by lower-cased name (HTTP header names are case-insensitive)."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, served on the server's event loop: requests are
    answered in order, one at a time; the latency is a timer, not a sleeping thread (a
    benchmark's provider shares the machine with what it measures)."""

    def __init__(self, owner: FakeLLMServer) -> None:
        self.owner = owner
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.pending: asyncio.TimerHandle | None = None  # an answer waiting for its latency
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # no Nagle delay on small writes
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.owner._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending is not None:
            self.pending.cancel()
        self.owner._conns.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.pending is None:
            self._next_request()

    def _next_request(self) -> None:
        try:
            request = _parse_request(self.buffer)
        except ValueError as exc:
            self.close_after = True
            payload = json.dumps(_anthropic_error(400, f"bad request: {exc}")).encode()
            self._answer(_Outcome(400, payload))
            return
        if request is None:  # incomplete: wait for more bytes
            return
        started = time.monotonic()
        method, target, headers, raw = request
        if headers.get("connection", "").lower() == "close":
            self.close_after = True
        try:
            out = self.owner._handle(method, target, headers, raw)
        except Exception as exc:  # a bug in the fake must show up as a 500, not a hung client
            payload = json.dumps(_anthropic_error(500, f"fake server bug: {exc!r}")).encode()
            out = _Outcome(500, payload)
        # the latency is the whole call's: the time spent reading and answering counts in it
        remaining = out.sleep_s - (time.monotonic() - started)
        loop = asyncio.get_running_loop()
        self.pending = loop.call_later(max(0.0, remaining), self._answer, out)

    def _answer(self, out: _Outcome) -> None:
        self.pending = None
        if self.transport is None:
            return
        reason = _REASONS.get(out.status) or _phrase(out.status)
        head = [
            f"HTTP/1.1 {out.status} {reason}",
            "Server: fake-llm/1.0",
            f"Content-Type: {out.content_type}",
            f"Content-Length: {len(out.payload)}",
            *(f"{key}: {value}" for key, value in out.headers.items()),
        ]
        if self.close_after:
            head.append("Connection: close")
        self.transport.write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + out.payload)
        if self.close_after:
            self.transport.close()
        elif self.buffer:
            self._next_request()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a scripted fault may use any status
        return "Unknown"


def _parse_request(buffer: bytearray) -> tuple[str, str, _Headers, bytes] | None:
    """Take one complete request off the front of `buffer`: (method, target, headers, body);
    None while it is incomplete. Bodies by Content-Length or chunked."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise ValueError("request head too large")
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"malformed request line {lines[0][:80]!r}")
    headers = _Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(buffer, start)
        if body is None:
            return None
        raw, consumed = body
    else:
        length = int(headers.get("content-length") or 0)
        if len(buffer) < start + length:
            return None
        raw, consumed = bytes(buffer[start : start + length]), start + length
    del buffer[:consumed]
    return parts[0], parts[1], headers, raw


def _dechunk(buffer: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at `pos`: (body, end offset), or None while incomplete."""
    data = bytearray()
    while True:
        eol = buffer.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buffer[pos:eol]).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            trailers_end = buffer.find(b"\r\n\r\n", eol)
            if buffer[eol : eol + 4] == b"\r\n\r\n":
                return bytes(data), eol + 4
            return None if trailers_end < 0 else (bytes(data), trailers_end + 4)
        if len(buffer) < eol + 2 + size + 2:
            return None
        data += buffer[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


# --------------------------------------------------------------------------- the server


class FakeLLMServer:
    """Fake Anthropic + OpenAI endpoint on 127.0.0.1: scripted replies, served by an event loop
    in a daemon thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0,
        *,
        strict_alternation: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Every LLM call takes ``latency_ms`` from its request to its answer (reading,
        matching and encoding included, as a real provider's latency is);
        ``strict_alternation`` rejects non-alternating Anthropic messages with 400 (the live API
        now merges them; we keep the stricter check so our client is held to the documented
        contract); ``tls`` serves HTTPS with that server context."""
        self.latency_ms = latency_ms
        self.strict_alternation = strict_alternation
        self.tls = tls
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._scripts: dict[str, tuple[Text, ...]] = {}
        self._attempts: dict[tuple[str | None, int], int] = {}
        self._log: list[RequestRecord] = []
        self._conns: set[_Connection] = set()  # touched on the server's loop only
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> Self:
        """Bind, then serve from an event loop in a daemon thread; returns self for chaining."""
        if self._sock is not None:
            return self
        sock = socket.create_server((self._host, self._port), backlog=256)
        ready = threading.Event()
        self._sock = sock
        self._thread = threading.Thread(
            target=self._serve, args=(sock, ready), daemon=True, name=f"fake-llm-{self.port}"
        )
        self._thread.start()
        if not ready.wait(5) or not self._thread.is_alive():
            self.stop()
            raise RuntimeError("the fake LLM server's event loop did not start")
        return self

    def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._stopped = loop.create_future()
            server = loop.run_until_complete(
                loop.create_server(lambda: _Connection(self), sock=sock, backlog=256, ssl=self.tls)
            )
            ready.set()
            loop.run_until_complete(self._stopped)
            server.close()
            for conn in list(self._conns):  # answers still waiting for their latency: dropped
                conn.abort()
            loop.run_until_complete(asyncio.sleep(0))  # let the connections see their end
        finally:
            ready.set()
            loop.close()

    def stop(self) -> None:
        """Stop serving, drop kept-alive connections and answers still waiting to be sent."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(lambda: stopped.done() or stopped.set_result(None))
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        sock.close()
        self._loop = self._stopped = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("server not started")
        return int(self._sock.getsockname()[1])

    @property
    def calls_in_progress(self) -> int:
        """Calls received and not yet answered whose client is still connected (a client
        that gives up on a call closes its connection, and the call is dropped)."""
        return sum(conn.pending is not None for conn in list(self._conns))

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` with ``tls``) — the anthropic SDK's base_url."""
        return f"{'https' if self.tls else 'http'}://{self._host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """``base_url + "/v1"`` — the openai SDK's base_url."""
        return self.base_url + "/v1"

    # -- scripting & log

    def script(self, keyword: str, replies: Sequence[Text]) -> None:
        """Use ``replies`` for conversations whose first user turn contains ``keyword``.

        First registered keyword wins; re-registering a keyword replaces its replies in place and
        resets its fault counters. ``""`` matches everything (register it last as a catch-all).
        """
        if not replies:
            raise ValueError("a script needs at least one reply")
        replies = tuple(replies)
        for reply in replies:
            if not isinstance(reply, Text):
                raise TypeError(f"replies must be Text, got {type(reply).__name__}")
        with self._lock:
            self._scripts[keyword] = replies
            for key in [k for k in self._attempts if k[0] == keyword]:
                del self._attempts[key]

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of all LLM calls so far (oldest first)."""
        with self._lock:
            return list(self._log)

    def calls(self, keyword: str | None) -> int:
        """Number of LLM calls (failed ones included) matched to ``keyword`` (None: default)."""
        with self._lock:
            return sum(1 for r in self._log if r.keyword == keyword)

    def reset(self, *, scripts: bool = True) -> None:
        """Clear the log and fault counters, and (by default) all scripts."""
        with self._lock:
            self._log.clear()
            self._attempts.clear()
            if scripts:
                self._scripts.clear()

    # -- internals used by the handler

    def _match(self, messages: list[Any]) -> tuple[str | None, int, tuple[Text, ...]]:
        turns = _turns(messages)
        first_user = next((text for role, text in turns if role == "user"), "")
        index = sum(1 for role, _ in turns if role == "assistant")
        with self._lock:
            for keyword, replies in self._scripts.items():
                if keyword in first_user:
                    return keyword, index, replies
        return None, index, DEFAULT_REPLIES

    def _choose(self, messages: list[Any]) -> tuple[str | None, int, Text, int | None]:
        """Pick the reply and, if a fault is due for this keyword+index, the status to fail with."""
        keyword, index, replies = self._match(messages)
        reply = replies[min(index, len(replies) - 1)]
        fail: int | None = None
        if reply.fail_first:
            with self._lock:
                n = self._attempts.get((keyword, index), 0)
                self._attempts[(keyword, index)] = n + 1
            if n < len(reply.fail_first):
                fail = reply.fail_first[n]
        return keyword, index, reply, fail

    def _record(self, **kwargs: Any) -> None:
        with self._lock:
            self._log.append(RequestRecord(timestamp=time.time(), **kwargs))

    def _handle(self, method: str, target: str, headers: Any, raw: bytes) -> _Outcome:
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        if method == "POST" and path == "/v1/messages":
            return self._llm_call("anthropic", path, headers, raw)
        if method == "POST" and path == "/v1/chat/completions":
            return self._llm_call("openai", path, headers, raw)
        if method == "POST" and path == "/v1/messages/count_tokens":
            return self._count_tokens(headers, raw)
        if method == "GET" and path == "/v1/models":
            return self._models(headers)
        if method == "GET" and path == "/_log":
            full = parse_qs(url.query).get("full", ["0"])[0] not in ("0", "", "false")
            return _json_outcome(200, {"requests": [r.to_dict(full) for r in self.requests]})
        if method == "POST" and path == "/_script":
            return self._remote_script(raw)
        if method == "POST" and path == "/_reset":
            data = json.loads(raw or b"{}")
            self.reset(scripts=bool(data.get("scripts", True)))
            return _json_outcome(200, {"ok": True})
        if method == "GET" and path in ("/", "/health"):
            return _json_outcome(200, {"ok": True})
        return _json_outcome(404, _anthropic_error(404, f"Not found: {method} {path}"))

    def _remote_script(self, raw: bytes) -> _Outcome:
        try:
            data = json.loads(raw)
            replies = [reply_from_dict(r) for r in data["replies"]]
            self.script(str(data["keyword"]), replies)
        except (ValueError, KeyError, TypeError) as exc:
            return _json_outcome(400, {"ok": False, "error": str(exc)})
        return _json_outcome(200, {"ok": True, "keyword": data["keyword"], "replies": len(replies)})

    def _models(self, headers: Any) -> _Outcome:
        if headers.get("anthropic-version"):
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in MODELS
            ]
            body = {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
        else:
            data = [
                {"id": m, "object": "model", "created": 1735689600, "owned_by": "fake"}
                for m in MODELS
            ]
            body = {"object": "list", "data": data}
        return _json_outcome(200, body)

    def _count_tokens(self, headers: Any, raw: bytes) -> _Outcome:
        try:
            body = _parse_json(raw)
            _check_anthropic_auth(headers)
        except _ApiError as err:
            return _json_outcome(err.status, _anthropic_error(err.status, err.message))
        return _json_outcome(200, {"input_tokens": count_tokens(_input_text(body))})

    def _llm_call(self, protocol: str, path: str, headers: Any, raw: bytes) -> _Outcome:
        """Validate, pick the scripted reply, log it and build the wire response."""
        latency = self.latency_ms / 1000
        body: Any = None
        keyword: str | None = None
        index = 0
        stream = False
        model: str | None = None
        anthropic = protocol == "anthropic"

        def error(
            status: int,
            message: str,
            code: str | None = None,
            extra_headers: dict[str, str] | None = None,
        ) -> _Outcome:
            self._record(
                protocol=protocol,
                path=path,
                model=model,
                keyword=keyword,
                index=index,
                status=status,
                stream=stream,
                input_tokens=0,
                output_tokens=0,
                stop_reason=None,
                body=body,
            )
            payload = (
                _anthropic_error(status, message)
                if anthropic
                else _openai_error(status, message, code)
            )
            out = _json_outcome(status, payload, sleep_s=latency)
            out.headers.update(extra_headers or {})
            return out

        try:
            body = _parse_json(raw)
            model = body.get("model") if isinstance(body.get("model"), str) else None
            stream = bool(body.get("stream"))
            messages = body.get("messages")
            if isinstance(messages, list):
                keyword, index, _ = self._match(messages)
            if anthropic:
                _check_anthropic_auth(headers)
                _validate_anthropic(body, strict_alternation=self.strict_alternation)
            else:
                _check_openai_auth(headers)
                _validate_openai(body)
        except _ApiError as err:
            return error(err.status, err.message, err.code)

        keyword, index, reply, fail = self._choose(body["messages"])
        if fail is not None:
            hdrs: dict[str, str] = {}
            retry_after = reply.retry_after
            if retry_after is None and fail == 429:
                retry_after = 1.0
            if retry_after is not None:
                hdrs["retry-after"] = _fmt_seconds(retry_after)
                hdrs["retry-after-ms"] = str(int(retry_after * 1000))
            message = _FAULT_MESSAGES.get(fail, f"Scripted failure {fail}")
            return error(fail, message, extra_headers=hdrs)

        stops: Any = body.get("stop_sequences") if anthropic else body.get("stop")
        if isinstance(stops, str):
            stops = [stops]
        text, stop_seq = _apply_stops(reply.text, [s for s in stops or [] if isinstance(s, str)])
        stop_reason = "stop_sequence" if stop_seq is not None else "end_turn"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and count_tokens(text) > max_tokens:
            text, stop_seq, stop_reason = text[: _max_chars(max_tokens)], None, "max_tokens"
        input_tokens = count_tokens(_input_text(body))
        output_tokens = count_tokens(text)
        self._record(
            protocol=protocol,
            path=path,
            model=model,
            keyword=keyword,
            index=index,
            status=200,
            stream=stream,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            stop_reason=stop_reason,
            body=body,
        )
        sleep_s = latency + reply.delay_ms / 1000 + reply.hang_s
        args = (
            model or "",
            text,
            reply.thinking,
            stop_reason,
            stop_seq,
            input_tokens,
            output_tokens,
        )
        if reply.raw_body is not None:
            return _Outcome(200, reply.raw_body.encode(), sleep_s=sleep_s)
        if anthropic:
            if stream:
                return _sse_outcome(_anthropic_sse(*args), sleep_s)
            return _json_outcome(200, _anthropic_message(*args), sleep_s=sleep_s)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        oargs = (model or "", text, stop_reason, input_tokens, output_tokens)
        if stream:
            return _sse_outcome(_openai_sse(*oargs, include_usage=include_usage), sleep_s)
        return _json_outcome(200, _openai_completion(*oargs), sleep_s=sleep_s)


# --------------------------------------------------------------------------- validation


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"")
    except ValueError as exc:
        raise _ApiError(400, f"There was an error parsing the body: {exc}") from None
    if not isinstance(body, dict):
        raise _ApiError(400, "Request body must be a JSON object")
    return body


def _check_anthropic_auth(headers: Any) -> None:
    """Accept ``x-api-key`` or ``Authorization: Bearer`` (anthropic SDK 2.x sends the latter)."""
    key = headers.get("x-api-key")
    if key is None:
        auth = headers.get("authorization") or ""
        key = auth[7:] if auth.lower().startswith("bearer ") else None
    if not key:
        raise _ApiError(401, "x-api-key header is required")
    if key == BAD_KEY:
        raise _ApiError(401, "invalid x-api-key")


def _check_openai_auth(headers: Any) -> None:
    auth = headers.get("authorization") or ""
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not key:
        raise _ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code=None,
        )
    if key == BAD_KEY:
        raise _ApiError(
            401,
            f"Incorrect API key provided: {key}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


def _validate_anthropic(body: dict[str, Any], *, strict_alternation: bool) -> None:
    """The checks of the real Messages API that our client has to get right."""
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise _ApiError(400, f"{name}: Field required")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise _ApiError(400, "messages: at least one message is required")
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and (
        thinking.get("type") == "enabled" or "budget_tokens" in thinking
    ):
        raise _ApiError(
            400,
            "thinking.type.enabled is not supported for this model. Use thinking.type.adaptive "
            "and output_config.effort to control thinking behavior.",
        )
    prev: str | None = None
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "system":
            raise _ApiError(
                400,
                f'messages.{i}.role: Unexpected role "system". The Messages API accepts a '
                'top-level `system` parameter, not "system" as an input message role.',
            )
        if role not in ("user", "assistant"):
            raise _ApiError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if strict_alternation:
            if i == 0 and role != "user":
                raise _ApiError(400, 'messages: first message must use the "user" role')
            if role == prev:
                raise _ApiError(
                    400,
                    'messages: roles must alternate between "user" and "assistant", '
                    f'but found multiple "{role}" roles in a row',
                )
        prev = role
    if prev == "assistant":
        raise _ApiError(
            400,
            "This model does not support assistant message prefill. "
            "The conversation must end with a user message.",
        )


def _validate_openai(body: dict[str, Any]) -> None:
    if not body.get("model"):
        raise _ApiError(400, "you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _ApiError(400, "'messages' is a required property")
    if not messages:
        raise _ApiError(400, "[] is too short - 'messages'")


# --------------------------------------------------------------------------- wire bodies


def _json_outcome(status: int, payload: Any, *, sleep_s: float = 0.0) -> _Outcome:
    headers = {"request-id": f"req_{secrets.token_hex(12)}", "x-request-id": secrets.token_hex(8)}
    return _Outcome(status, json.dumps(payload).encode(), headers=headers, sleep_s=sleep_s)


def _sse_outcome(events: Iterator[str], sleep_s: float) -> _Outcome:
    # Whole stream in one body with Content-Length: keeps the connection reusable and the
    # SDK's SSE decoder does not care how the bytes were framed.
    payload = "".join(events).encode()
    return _Outcome(
        200, payload, "text/event-stream; charset=utf-8", {"cache-control": "no-cache"}, sleep_s
    )


def _signature(thinking: str) -> str:
    return "sig_" + secrets.token_urlsafe(24)


def _anthropic_message(
    model: str,
    text: str,
    thinking: str | None,
    stop_reason: str,
    stop_seq: str | None,
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if thinking is not None:
        content.append(
            {"type": "thinking", "thinking": thinking, "signature": _signature(thinking)}
        )
    content.append({"type": "text", "text": text})
    return {
        "id": f"msg_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_seq,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _anthropic_sse(
    model: str,
    text: str,
    thinking: str | None,
    stop_reason: str,
    stop_seq: str | None,
    input_tokens: int,
    output_tokens: int,
) -> Iterator[str]:
    """The Messages API event sequence for one reply."""
    message = _anthropic_message(model, "", None, stop_reason, stop_seq, input_tokens, 1)
    message.update(content=[], stop_reason=None, stop_sequence=None)
    yield _sse("message_start", {"type": "message_start", "message": message})
    index = 0
    if thinking is not None:
        block = {"type": "thinking", "thinking": "", "signature": ""}
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        for piece in _chunks(thinking):
            delta = {"type": "thinking_delta", "thinking": piece}
            yield _sse(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        delta = {"type": "signature_delta", "signature": _signature(thinking)}
        yield _sse(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        index = 1
    block = {"type": "text", "text": ""}
    yield _sse(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )
    yield _sse("ping", {"type": "ping"})
    for piece in _chunks(text):
        delta = {"type": "text_delta", "text": piece}
        yield _sse(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_seq},
            "usage": {"output_tokens": output_tokens},
        },
    )
    yield _sse("message_stop", {"type": "message_stop"})


_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def _openai_completion(
    model: str, text: str, stop_reason: str, input_tokens: int, output_tokens: int
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": _FINISH_REASONS[stop_reason],
            }
        ],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
        "system_fingerprint": None,
    }


def _openai_sse(
    model: str,
    text: str,
    stop_reason: str,
    input_tokens: int,
    output_tokens: int,
    *,
    include_usage: bool,
) -> Iterator[str]:
    """Chat Completions chunk stream, with the trailing usage chunk when it was requested."""
    base = {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return f"data: {json.dumps({**base, 'choices': [choice], **extra})}\n\n"

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in _chunks(text):
        yield chunk({"content": piece})
    yield chunk({}, _FINISH_REASONS[stop_reason])
    if include_usage:
        usage = {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


# --------------------------------------------------------------------------- remote control


def _post_json(url: str, data: dict[str, Any], timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def remote_script(base_url: str, keyword: str, replies: Sequence[Text], timeout: float = 5) -> None:
    """``server.script(...)`` for a server in another process (``POST /_script``)."""
    body = {"keyword": keyword, "replies": [reply_to_dict(r) for r in replies]}
    _post_json(base_url.rstrip("/") + "/_script", body, timeout)


def remote_log(base_url: str, full: bool = False, timeout: float = 5) -> list[dict[str, Any]]:
    """The request log of a server in another process (``GET /_log``), as dicts."""
    url = base_url.rstrip("/") + "/_log" + ("?full=1" if full else "")
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())["requests"]


def remote_reset(base_url: str, scripts: bool = True, timeout: float = 5) -> None:
    """``server.reset(...)`` for a server in another process (``POST /_reset``)."""
    _post_json(base_url.rstrip("/") + "/_reset", {"scripts": scripts}, timeout)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; print the base URL as the first stdout line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--lenient-alternation",
        action="store_true",
        help="accept non-alternating Anthropic messages (the live API merges them)",
    )
    args = parser.parse_args(argv)
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = FakeLLMServer(
        args.host, args.port, args.latency_ms, strict_alternation=not args.lenient_alternation
    )
    with server:
        print(server.base_url, flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
