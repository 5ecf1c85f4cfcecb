"""A minimal keep-alive HTTP/1.1 client on asyncio streams: the load generators' client.

Why not httpx: an `httpx.AsyncClient` request costs 0.9-1.1 ms of CPU on this machine, one of
this client 0.06 ms (64 closed-loop clients, 200 ms answers, one process). On a 2-core machine
the difference is CPU the platform under test does not get (at c=64 about 6 % of the machine)
and, since answers arrive in bursts, time each client of a burst waits for the others'
answers to be parsed, which the latency would count against the server. It speaks only what
the benchmark needs: GET and POST (JSON bodies, the benchmark's extra headers), answers with
`Content-Length` or chunked bodies, streamed answers read line by line (SSE), keep-alive.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection failed or the answer was not valid HTTP/1.1."""


# a connection that broke, or an answer cut short or with a head too long to be one
_BROKEN = (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


def _broken(exc: BaseException) -> HttpError:
    """One of `_BROKEN` as this module's error (some have an empty message)."""
    return HttpError(str(exc) or type(exc).__name__)


class Response:
    """An answer's status and headers; the body is read with `read` or `lines`."""

    def __init__(self, status: int, headers: dict[str, str], reader: asyncio.StreamReader) -> None:
        self.status = status
        self.headers = headers
        self.complete = False  # the whole body was read: the connection can serve another
        self._reader = reader

    @property
    def chunked(self) -> bool:
        return self.headers.get("transfer-encoding", "").lower() == "chunked"

    async def read(self) -> bytes:
        if "content-length" in self.headers:
            body = await self._reader.readexactly(int(self.headers["content-length"]))
            self.complete = True
            return body
        if self.chunked:
            return b"".join([chunk async for chunk in self._chunks()])
        raise HttpError("response without Content-Length or chunked encoding")

    async def lines(self) -> AsyncIterator[str]:
        """The body line by line as it arrives (an SSE stream), without line endings."""
        if not self.chunked:
            for line in (await self.read()).decode().splitlines():
                yield line
            return
        pending = b""
        async for chunk in self._chunks():
            *ended, pending = (pending + chunk).split(b"\n")
            for line in ended:
                yield line.rstrip(b"\r").decode()
        if pending:
            yield pending.rstrip(b"\r").decode()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for _ in range(1_000_000):  # bounded; a stream of a long execution has thousands
            size_line = await self._reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError as exc:
                raise HttpError(f"bad chunk size {size_line[:40]!r}") from exc
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                self.complete = True
                return
            yield await self._reader.readexactly(size)
            await self._reader.readexactly(2)
        raise HttpError("too many chunks")


class Connection:
    """One persistent connection; not for concurrent use (one caller at a time)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"unsupported URL {base_url!r}")
        self.host = url.hostname
        self.port = url.port or 80
        extra = {"Accept": "application/json", **(headers or {})}
        self._head = "".join(f"{name}: {value}\r\n" for name, value in extra.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of `GET path`."""
        async with self.request("GET", path) as response:
            return response.status, await response.read()

    async def post_json(self, path: str, payload: Any) -> tuple[int, bytes]:
        """(status, body) of `POST path` with `payload` as its JSON body."""
        async with self.request("POST", path, payload) as response:
            return response.status, await response.read()

    @asynccontextmanager
    async def request(self, method: str, path: str, payload: Any = None) -> AsyncIterator[Response]:
        """Send one request (in one write) and yield its answer once its head has arrived; the
        body is read inside the block (a connection whose answer was not read to its end is
        closed on leaving it). A GET is sent again, once, on a new connection if a
        kept-alive one turns out to be closed before the answer's head (never a POST: the
        server may have taken it)."""
        body = b"" if payload is None else json.dumps(payload).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self._head}"
        if payload is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        message = (head + "\r\n").encode() + body
        attempts = 2 if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            reader, writer = await self._connect()
            try:
                writer.write(message)
                await writer.drain()
                response = await self._read_head(reader)
                break
            except _BROKEN as exc:
                self.close()
                if attempt == attempts:
                    raise _broken(exc) from exc
        try:
            yield response
        except _BROKEN as exc:
            self.close()
            raise _broken(exc) from exc
        except BaseException:
            self.close()  # the body may be half read: the connection cannot be reused
            raise
        if not response.complete or response.headers.get("connection", "").lower() == "close":
            self.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # a connection the server closed while it was idle (its keep-alive timeout) is at EOF
        # already: it is replaced before a request is written to it, a POST included
        if (
            self._reader is None
            or self._writer is None
            or self._writer.is_closing()
            or self._reader.at_eof()
        ):
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> Response:
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise HttpError(f"bad status line {lines[0]!r}") from exc
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        return Response(status, headers, reader)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class Pool:
    """A fixed number of connections per base URL; callers queue for a free one (in an open
    loop that queueing is part of the latency, as it would be in any client)."""

    def __init__(
        self, base_urls: list[str], per_url: int, headers: dict[str, str] | None = None
    ) -> None:
        # interleaved: consecutive requests go to different urls
        self._all = [Connection(url, headers) for _ in range(per_url) for url in base_urls]
        self._free: asyncio.Queue[Connection] = asyncio.Queue()
        for conn in self._all:
            self._free.put_nowait(conn)

    async def get(self, path: str) -> tuple[int, bytes]:
        conn = await self._free.get()
        try:
            return await conn.get(path)
        finally:
            self._free.put_nowait(conn)

    def close(self) -> None:
        for conn in self._all:
            conn.close()
