"""The hot statements on PostgreSQL, run on asyncpg directly inside SQLAlchemy's transaction.

SQLAlchemy's execution layer (parameter processing, execution context, result wrapping, the
greenlet bridge) costs about 0.3 ms of CPU per statement on top of asyncpg's own ~0.1 ms, and
an execution runs about twenty statements. The statements stay SQLAlchemy Core constructs,
defined once for both databases; on PostgreSQL `execute` compiles each one once (per set of
parameter names) to asyncpg's `$n` SQL and runs it on the connection SQLAlchemy holds, in the
transaction SQLAlchemy opened, so commit, rollback and pooling are unchanged. asyncpg prepares
it once per connection (its statement cache). On SQLite `execute` is `conn.execute`.

Results offer the part of SQLAlchemy's `Result` the callers use: iteration over rows with
`_mapping`, `first()`, `all()`, `scalar_one()`, `scalar_one_or_none()`, `rowcount`. Only
statements whose result columns need no SQLAlchemy type processing may go through here (plain
numbers, text, timestamps; JSON columns are decoded by the codec SQLAlchemy installs on the
connection; UUID columns come back as `uuid.UUID`-like values, which callers `str()`), and
only statements built once at import time (compiled forms are cached by statement).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.base import Executable

_COMPILED: dict[tuple[int, frozenset[str]], Compiled] = {}


@dataclass(frozen=True)
class Compiled:
    statement: Executable  # held, so its id() is not reused while cached
    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    processors: dict[str, Callable[[Any], Any]]

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        out = []
        for name in self.names:
            value = params[name] if name in params else self.defaults[name]
            proc = self.processors.get(name)
            out.append(proc(value) if proc is not None else value)
        return out


class Row:
    """An asyncpg record seen as a SQLAlchemy row (by position, or by name via `_mapping`)."""

    __slots__ = ("_mapping",)

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._mapping = record

    def __getitem__(self, index: int) -> Any:
        return self._mapping[index]  # type: ignore[index]


class Rows:
    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)

    def all(self) -> list[Row]:
        return list(self._rows)

    def first(self) -> Row | None:
        return self._rows[0] if self._rows else None

    def scalar_one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise ValueError("more than one row")
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        if len(self._rows) != 1:
            raise ValueError(f"expected one row, got {len(self._rows)}")
        return self._rows[0][0]


def compile_statement(
    conn: AsyncConnection, statement: Executable, keys: frozenset[str]
) -> Compiled:
    """`statement` as asyncpg SQL for these parameter names (cached)."""
    cache_key = (id(statement), keys)
    compiled = _COMPILED.get(cache_key)
    if compiled is None or compiled.statement is not statement:
        sa = statement.compile(dialect=conn.dialect, column_keys=sorted(keys))  # type: ignore[attr-defined]
        names = tuple(sa.positiontup or ())
        compiled = Compiled(
            statement=statement,
            sql=sa.string,
            names=names,
            defaults=dict(sa.params),
            processors={k: v for k, v in sa._bind_processors.items() if k in names},
        )
        _COMPILED[cache_key] = compiled
    return compiled


async def _driver(conn: AsyncConnection) -> tuple[Any, Any]:
    """(SQLAlchemy's asyncpg adapter, the asyncpg connection), with the transaction begun."""
    adapter = conn.sync_connection.connection.dbapi_connection  # type: ignore[union-attr]
    if adapter._transaction is None and conn.in_transaction():  # type: ignore[union-attr]
        try:
            await adapter._start_transaction()  # type: ignore[union-attr]
        except BaseException:
            # asyncpg registers the transaction before BEGIN is answered, SQLAlchemy only once
            # it is: interrupted in between (a cancelled task), the pooled connection would
            # turn every later transaction into a savepoint of one that never commits, and
            # keep its locks. Such a connection is closed instead of returned to the pool.
            await conn.invalidate()
            raise
    return adapter, adapter._connection  # type: ignore[union-attr]


def _rowcount(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else -1


async def execute(
    conn: AsyncConnection, statement: Executable, params: Mapping[str, Any] | None = None
) -> Rows | Result[Any]:
    """Run one statement; on PostgreSQL without SQLAlchemy's per-statement overhead."""
    if conn.dialect.name != "postgresql":
        return await conn.execute(statement, dict(params or {}))
    params = params or {}
    compiled = compile_statement(conn, statement, frozenset(params))
    adapter, driver = await _driver(conn)
    try:
        if getattr(statement, "_returning", None) or getattr(statement, "is_select", False):
            records = await driver.fetch(compiled.sql, *compiled.args(params))
            return Rows([Row(r) for r in records], len(records))
        status = await driver.execute(compiled.sql, *compiled.args(params))
        return Rows([], _rowcount(status))
    except Exception as error:
        adapter._handle_exception(error)  # SQLAlchemy's own translation (DBAPIError, invalidation)
        raise


async def execute_many(
    conn: AsyncConnection, statement: Executable, rows: Sequence[Mapping[str, Any]]
) -> None:
    """One statement, several parameter sets (all with the same names); no results."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        await conn.execute(statement, [dict(r) for r in rows])
        return
    if len(rows) == 1:
        await execute(conn, statement, rows[0])
        return
    compiled = compile_statement(conn, statement, frozenset(rows[0]))
    adapter, driver = await _driver(conn)
    try:
        await driver.executemany(compiled.sql, [compiled.args(r) for r in rows])
    except Exception as error:
        adapter._handle_exception(error)
        raise


async def fetch(conn: AsyncConnection, sql: str, *args: Any) -> list[Any]:
    """PostgreSQL only: run asyncpg SQL, return its records. Outside a transaction that
    SQLAlchemy began, the statement commits on its own (one round trip)."""
    adapter, driver = await _driver(conn)
    try:
        return await driver.fetch(sql, *args)  # type: ignore[no-any-return]
    except Exception as error:
        adapter._handle_exception(error)
        raise


async def fetchval(conn: AsyncConnection, sql: str, *args: Any) -> Any:
    """`fetch`, first column of the first row (None when there is none)."""
    records = await fetch(conn, sql, *args)
    return records[0][0] if records else None
