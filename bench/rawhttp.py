"""A minimal keep-alive HTTP/1.1 GET client on asyncio streams, for the open-loop scenario.

Why not httpx there: at a fixed 500 requests/s httpx.AsyncClient spent about 1.2 ms of CPU
per request (11 s of CPU in a 6 s run with many connections in its pool), i.e. the load
generator alone used most of the 2 cores the platform under test needed. This client costs a
small fraction of that, so the read-path latencies measure the server. It speaks only what
the benchmark needs: GET (with the benchmark's extra headers), `Content-Length` or chunked
bodies, keep-alive.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection failed or the answer was not valid HTTP/1.1."""


class Connection:
    """One persistent connection; not for concurrent use (the pool hands it to one caller)."""

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

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of `GET path`; reconnects once if a kept-alive connection was closed."""
        for attempt in (1, 2):
            reader, writer = await self._connect()
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self._head}\r\n".encode()
            )
            try:
                await writer.drain()
                return await self._read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.close()
                if attempt == 2:
                    raise HttpError(str(exc)) from exc
        raise HttpError("unreachable")  # pragma: no cover

    async def _read_response(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise HttpError(f"bad status line {lines[0]!r}") from exc
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked(reader)
        else:
            raise HttpError("response without Content-Length or chunked encoding")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        for _ in range(1_000_000):  # bounded; real responses have a handful of chunks
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        raise HttpError("too many chunks")

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
        except Exception:
            conn.close()
            raise
        finally:
            self._free.put_nowait(conn)

    def close(self) -> None:
        for conn in self._all:
            conn.close()
