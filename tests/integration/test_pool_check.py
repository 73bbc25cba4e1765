"""The pool's liveness check (``services.common.db.check_unless_recent``): a connection is checked before
it is handed out unless its last check passed within ``CHECK_BYPASS_S``; a connection whose backend died
is replaced when the check runs, and fails its one caller (then is discarded) inside the window."""

from __future__ import annotations

import psycopg
import pytest

from services.common import db
from services.common.config import DatabaseSettings
from services.common.db import Pool, check_unless_recent, connect, open_pool


async def _terminate(database_url: str, backend_pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s, 5000)", (backend_pid,))


async def backend_pid(pool: Pool) -> int:
    """The backend pid of the connection the pool hands out next (it must work)."""
    async with pool.connection(timeout=10) as conn:
        cursor = await conn.execute("SELECT pg_backend_pid() AS pid")
        row = await cursor.fetchone()
    assert row is not None
    return int(row["pid"])  # type: ignore[call-overload]


async def test_a_connection_checked_within_the_window_is_handed_out_unchecked(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = DatabaseSettings(database_url=database_url)
    conn = await connect(settings)
    try:
        monkeypatch.setattr(db, "CHECK_BYPASS_S", 3600.0)
        await check_unless_recent(conn)  # the first check runs, and passes
        await _terminate(database_url, conn.info.backend_pid)
        await check_unless_recent(conn)  # within the window: no round trip, so the dead backend goes unseen
        monkeypatch.setattr(db, "CHECK_BYPASS_S", 0.0)
        with pytest.raises(psycopg.OperationalError):
            await check_unless_recent(conn)  # outside it the check runs and finds the connection dead
    finally:
        await conn.close()


async def test_the_pool_replaces_a_connection_that_died_since_its_last_check(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = await open_pool(DatabaseSettings(database_url=migrated_database_url, db_pool_min_size=1, db_pool_max_size=1))
    try:
        async with pool.connection() as conn:
            dead_pid = conn.info.backend_pid
        await _terminate(migrated_database_url, dead_pid)
        monkeypatch.setattr(db, "CHECK_BYPASS_S", 0.0)
        assert await backend_pid(pool) != dead_pid
    finally:
        await pool.close()


async def test_inside_the_window_a_dead_connection_fails_one_caller_and_is_discarded(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "CHECK_BYPASS_S", 3600.0)
    pool = await open_pool(DatabaseSettings(database_url=migrated_database_url, db_pool_min_size=1, db_pool_max_size=1))
    try:
        async with pool.connection() as conn:
            dead_pid = conn.info.backend_pid
        await _terminate(migrated_database_url, dead_pid)
        with pytest.raises(psycopg.OperationalError):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        assert await backend_pid(pool) != dead_pid
    finally:
        await pool.close()
