"""PostgreSQL access: one pool per process, one way to open a transaction.

Every connection gets a connect timeout and a statement timeout, so no call can hang forever.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import psycopg_pool
from psycopg.adapt import AdaptersMap
from psycopg.rows import dict_row
from psycopg.types.array import ListBinaryDumper

from services.common.config import DatabaseSettings

Connection = psycopg.AsyncConnection[dict[str, object]]
Pool = psycopg_pool.AsyncConnectionPool[Connection]

# Errors that mean "the database is not reachable right now", as opposed to a bug or bad data.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    psycopg.errors.AdminShutdown,
    psycopg.errors.CannotConnectNow,
)


# The PostgreSQL backend pids of this process's pooled connections. The outbox relay wakes only for
# NOTIFYs sent by these (its own process's commits): with every relay woken by every commit, a platform
# of six processes ran six relay passes per commit, most of them finding nothing.
LOCAL_BACKEND_PIDS: set[int] = set()


async def _note_backend(conn: Connection) -> None:
    LOCAL_BACKEND_PIDS.add(conn.info.backend_pid)  # pids are reused: a stale one costs a spurious pass


# A pooled connection is checked (an empty query: one round trip, and the autocommit switch around it)
# before it is handed out, so a connection that died with a PostgreSQL restart is replaced instead of
# failing its caller. One that passed a check less than CHECK_BYPASS_S ago is handed out unchecked, as
# HikariCP does for connections used within the last 500 ms: a busy process checked every checkout,
# one round trip in four of a short transaction, in every process and in PostgreSQL. What the bypass
# risks is what a restart during a transaction does anyway (the statement fails with an
# OperationalError, the pool discards the connection, the caller's retry or 503 follows), only within
# half a second of a passed check.
CHECK_BYPASS_S = 0.5
_CHECKED_AT: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()


async def check_unless_recent(conn: Connection) -> None:
    """The pool's liveness check, skipped for a connection whose last check passed within
    ``CHECK_BYPASS_S``; raises (and the pool discards the connection) when the check fails."""
    now = time.monotonic()
    last = _CHECKED_AT.get(conn)
    if last is not None and now - last < CHECK_BYPASS_S:
        return
    await psycopg_pool.AsyncConnectionPool.check_connection(conn)
    _CHECKED_AT[conn] = now


# Lists (the arrays every set-based statement passes, ``unnest(%s::uuid[], ...)``) are sent in binary:
# psycopg's text form quotes and escapes element by element (a batch of 1,000 UUIDs took ~2 ms to
# dump, 1,000 outbox payloads ~7 ms; binary: ~0.3 and ~0.5 ms), which was a sixth of a scheduler batch.
ADAPTERS = AdaptersMap(psycopg.adapters)
ADAPTERS.register_dumper(list, ListBinaryDumper)


def connection_kwargs(settings: DatabaseSettings) -> dict[str, object]:
    """Connection parameters applied to every connection the project opens."""
    return {
        "connect_timeout": max(1, round(settings.db_connect_timeout_s)),
        "options": f"-c statement_timeout={int(settings.db_statement_timeout_s * 1000)}",
        "application_name": "healingwork",
        "row_factory": dict_row,
        "context": ADAPTERS,
    }


async def open_pool(settings: DatabaseSettings, *, wait: bool = True) -> psycopg_pool.AsyncConnectionPool[Connection]:
    """Open the process's connection pool; with ``wait`` it fails fast when the database is unreachable."""
    pool: psycopg_pool.AsyncConnectionPool[Connection] = psycopg_pool.AsyncConnectionPool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        kwargs=connection_kwargs(settings),
        timeout=settings.db_connect_timeout_s,
        reconnect_timeout=60,
        check=check_unless_recent,
        configure=_note_backend,
        open=False,
    )
    await pool.open(wait=wait, timeout=settings.db_connect_timeout_s * 2)
    return pool


@asynccontextmanager
async def transaction(pool: psycopg_pool.AsyncConnectionPool[Connection]) -> AsyncIterator[Connection]:
    """A connection inside one transaction: committed when the block ends, rolled back if it raises."""
    async with pool.connection() as conn, conn.transaction():
        yield conn


class DatabaseUnreachable(Exception):
    """PostgreSQL cannot be reached; the message is the one line a command prints."""


def unreachable_message(error: BaseException) -> str:
    """The one line that says PostgreSQL is unreachable, and the driver's first reason line."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"cannot reach PostgreSQL: {first}"


@asynccontextmanager
async def command_transaction(settings: DatabaseSettings) -> AsyncIterator[Connection]:
    """The one way a CLI command works on the database: a connection of its own (no pool) inside one
    transaction, committed when the block ends and rolled back if it raises (so a command that fails
    half-way changes nothing). Raises :class:`DatabaseUnreachable` when PostgreSQL does not answer,
    before or during the command; ``services.cli`` prints it as one line with exit status 1."""
    try:
        conn = await connect(settings)
        async with conn, conn.transaction():
            yield conn
    except UNAVAILABLE_ERRORS as error:
        raise DatabaseUnreachable(unreachable_message(error)) from error


async def connect(settings: DatabaseSettings) -> Connection:
    """A single connection outside the pool (for migrations and LISTEN)."""
    kwargs = connection_kwargs(settings)
    return await psycopg.AsyncConnection.connect(
        settings.database_url,
        autocommit=True,
        connect_timeout=kwargs["connect_timeout"],  # type: ignore[arg-type]
        options=kwargs["options"],  # type: ignore[arg-type]
        application_name="healingwork",
        row_factory=dict_row,
        context=ADAPTERS,
    )
