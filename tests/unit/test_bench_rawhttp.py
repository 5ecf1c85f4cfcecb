"""The load generators' HTTP client (`bench/rawhttp.py`): bodies of both framings, streamed
lines, keep-alive only when an answer was read to its end, and no POST sent twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import closing

import pytest
from bench.rawhttp import Connection, HttpError

Handler = Callable[[str, bytes], Awaitable[bytes | None]]  # (request line, body) → answer


class Server:
    """A loopback server answering each request with `handler`'s bytes (None: drop the
    connection); it notes every request and counts connections."""

    def __init__(self, handler: Handler, *, one_answer_per_connection: bool = False) -> None:
        self.handler = handler
        self.one_answer_per_connection = one_answer_per_connection  # as an idle timeout would
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    def connect(self, headers: dict[str, str] | None = None) -> closing[Connection]:
        port = self.server.sockets[0].getsockname()[1]
        return closing(Connection(f"http://127.0.0.1:{port}", headers))

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
                headers = dict(line.split(": ", 1) for line in head[1:] if line)
                body = await reader.readexactly(int(headers.get("Content-Length", 0)))
                self.requests.append((head[0], headers, body))
                answer = await self.handler(head[0], body)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.one_answer_per_connection:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def sized(body: bytes, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def chunked(*chunks: bytes) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    out += b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return out + b"0\r\n\r\n"


SSE = (b'event: step\r\ndata: {"n": 1}\r\n', b"\r\nevent: do", b"ne\r\ndata: {}\r\n\r\n")


async def sse_then_json(line: str, body: bytes) -> bytes:
    """A POST gets an SSE stream in chunks that split lines; anything else `{}`."""
    return chunked(*SSE) if line.startswith("POST") else sized(b"{}")


async def test_post_sends_json_and_headers_and_reuses_the_connection() -> None:
    async def echo(line: str, body: bytes) -> bytes:
        return sized(json.dumps({"line": line, "got": json.loads(body or b"null")}).encode())

    async with Server(echo) as server:
        with server.connect({"X-Key": "k"}) as conn:
            status, body = await conn.post_json("/execute", {"task": "2 + 2"})
            assert status == 200
            assert json.loads(body) == {"line": "POST /execute HTTP/1.1", "got": {"task": "2 + 2"}}
            assert (await conn.get("/execution/1"))[0] == 200
    assert server.connections == 1
    assert [h["X-Key"] for _, h, _ in server.requests] == ["k", "k"]
    assert server.requests[0][1]["Content-Type"] == "application/json"


async def test_a_stream_is_read_line_by_line_across_chunks() -> None:
    async with Server(sse_then_json) as server:
        with server.connect() as conn:
            async with conn.request("POST", "/execute", {"stream": True}) as response:
                lines = [line async for line in response.lines()]
            assert lines == ["event: step", 'data: {"n": 1}', "", "event: done", "data: {}", ""]
            assert await conn.get("/x") == (200, b"{}")
    assert server.connections == 1  # read to its end, the stream's connection served the GET


async def test_a_stream_left_before_its_end_does_not_poison_the_next_request() -> None:
    async with Server(sse_then_json) as server:
        with server.connect() as conn:
            async with conn.request("POST", "/execute", {"stream": True}) as response:
                async for line in response.lines():
                    if line == "event: done":
                        break  # as the load generator does once it has its `done` event
            assert await conn.get("/x") == (200, b"{}")
    assert server.connections == 2


async def test_a_broken_connection_resends_a_get_once_and_never_a_post() -> None:
    async def drop_first_of_each(line: str, body: bytes) -> bytes | None:
        seen = [r for r, _, _ in server.requests if r == line]
        return None if len(seen) == 1 else sized(b"ok")

    server = Server(drop_first_of_each)
    async with server:
        with server.connect() as conn:
            assert await conn.get("/x") == (200, b"ok")
            with pytest.raises(HttpError):
                await conn.post_json("/execute", {"task": "t"})
            assert await conn.post_json("/execute", {"task": "t"}) == (200, b"ok")
    methods = [line.split()[0] for line, _, _ in server.requests]
    assert methods == ["GET", "GET", "POST", "POST"]


async def test_a_post_goes_on_a_new_connection_when_the_server_closed_the_idle_one() -> None:
    async def ok(line: str, body: bytes) -> bytes:
        return sized(b"ok")

    async with Server(ok, one_answer_per_connection=True) as server:
        with server.connect() as conn:
            for _ in range(3):
                assert await conn.post_json("/execute", {"task": "t"}) == (200, b"ok")
                await asyncio.sleep(0.05)  # the server's close reaches the client
    assert server.connections == 3 and len(server.requests) == 3


async def test_an_answer_without_a_framing_or_status_is_an_http_error() -> None:
    answers = iter([b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n", b"garbage\r\n\r\n"])

    async def bad(line: str, body: bytes) -> bytes:
        return next(answers)

    async with Server(bad) as server:
        with server.connect() as conn:
            with pytest.raises(HttpError, match="Content-Length or chunked"):
                await conn.get("/x")
            with pytest.raises(HttpError, match="bad status line"):
                await conn.get("/y")
