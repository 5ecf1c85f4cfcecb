"""The event loop on which a process's model calls run.

Agents are synchronous (smolagents runs each in a thread), but their provider calls are not
made on those threads: each is handed to one event loop thread, where the SDKs' async clients
send it over `aiohttp` (the SDKs' `aiohttp` extra). With 64 agent threads, per call this costs
less CPU than 64 synchronous clients (one pool of connections on one thread: no lock, no pass
over every pooled connection, a parser in C) and the call can be cut short: cancelling its
future ends the wait at once and closes its connection, so a cancelled or timed-out execution
does not keep a thread and a connection until the provider answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (as for the api's and the worker's own loops)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ProviderLoop:
    """One daemon thread running an event loop, started by the first call, stopped by `close`
    for good (what ran on it, such as the clients' connections, is closed with it).

    A process that never calls a provider (the api) never starts it."""

    def __init__(self, name: str = "provider-io") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, call: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `call` on the loop; cancelling the future cancels the call."""
        try:
            loop = self._running()
        except RuntimeError:
            call.close()  # never to run
            raise
        return asyncio.run_coroutine_threadsafe(call, loop)

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("the provider loop is closed")
            if self._loop is None:
                self._loop = new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name=self.name, daemon=True
                )
                self._thread.start()
            return self._loop

    @property
    def running(self) -> bool:
        return self._loop is not None

    def close(self, *closers: Callable[[], Awaitable[object]]) -> None:
        """Run `closers` on the loop (closing what lives on it), then stop the thread. A
        closer that fails or takes longer than CLOSE_TIMEOUT_S is logged, not raised: the
        process is shutting down, and what follows (the bus, the database) must close too."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
            self._closed = True
        if loop is None or thread is None:
            return

        async def close_all() -> None:
            for closer in closers:
                await closer()

        closing = asyncio.run_coroutine_threadsafe(close_all(), loop)
        try:
            closing.result(CLOSE_TIMEOUT_S)
        except Exception as exc:
            closing.cancel()
            log.warning("closing the provider clients failed: %r", exc)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CLOSE_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()
