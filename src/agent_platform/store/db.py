"""The database handle: engine creation and the dialect differences (PostgreSQL vs SQLite).

Everything above this module speaks SQLAlchemy Core through `Database.begin()` /
`Database.connect()`; the driver's connection errors become `ServiceUnavailable` here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from agent_platform.errors import ServiceUnavailable

_UNAVAILABLE = (OperationalError, InterfaceError, OSError, ConnectionError, asyncio.TimeoutError)


# SQLSTATE classes that mean "the server is not there for us right now": connection
# exceptions, operator intervention (shutdown, cannot connect now), insufficient resources.
_UNAVAILABLE_SQLSTATES = ("08", "57P", "53")


def json_dumps(value: Any) -> str:
    """JSON columns' serializer: orjson (several times faster than `json`), with `json` as
    the fallback for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        state = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
        if state.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        if "not currently accepting connections" in str(orig):  # ALLOW_CONNECTIONS false
            return True
        return isinstance(getattr(orig, "__cause__", None), OSError | ConnectionError)
    return False


@asynccontextmanager
async def _unavailable_as_503() -> AsyncIterator[None]:
    """A database that cannot be reached is the client's 503 (try again), not a 500."""
    try:
        yield
    except Exception as exc:
        if _is_unavailable(exc):
            raise ServiceUnavailable("the database is unavailable; try again shortly") from exc
        raise


class Database:
    """Owns the async engine. `begin()` yields a connection inside one transaction."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {
            "echo": echo,
            "json_serializer": json_dumps,
            "json_deserializer": orjson.loads,
        }
        if self.is_sqlite:
            _ensure_sqlite_dir(url)
            kwargs["connect_args"] = {"timeout": 30}
            if ":memory:" in url:
                kwargs["poolclass"] = NullPool
        else:
            kwargs.update(
                # A fixed pool: a burst waits microseconds for a free connection. Overflow
                # connections would be opened and closed again under sustained load, each a
                # PostgreSQL backend fork plus asyncpg's type introspection.
                pool_size=pool_size,
                max_overflow=0,
                pool_timeout=30,
                pool_pre_ping=False,
                pool_recycle=1800,
                connect_args={"command_timeout": 30, "timeout": 5},
            )
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        # `connect()` serves reads and one-statement writes, which need no transaction; on
        # PostgreSQL SQLAlchemy would begin one at the first statement and roll it back when
        # the connection goes back to the pool: two more round trips per use. (SQLite begins
        # only before a write, and switching its mode costs a hop to its thread each way.)
        self._autocommit = (
            self.engine
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        # SQLite lets one transaction write at a time, and a writer that finds the lock
        # taken polls for it with growing sleeps (up to 100 ms each), so under concurrent
        # writes one could wait for a second while others kept getting in. This process's
        # transactions queue here instead, in order; the lock then only meets writers of
        # other processes (the CLI).
        self._sqlite_writer = asyncio.Lock() if self.is_sqlite else None
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; committed on success, rolled back on error. On SQLite, one at a
        time per process (so never nest them)."""
        async with (
            self._sqlite_writer or nullcontext(),
            _unavailable_as_503(),
            self.engine.begin() as conn,
        ):
            yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads and single-statement writes: each statement commits on its
        own (no transaction to begin or roll back)."""
        async with _unavailable_as_503(), self._autocommit.connect() as conn:
            yield conn

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout=2)
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split(":///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets readers proceed while a writer commits; busy_timeout makes writers queue."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
