"""Group commit (services/intake/batching.py) against a real PostgreSQL: concurrent jobs share
transactions, every answer comes after its commit, and one failing job never fails its neighbours."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import psycopg_pool
import pytest

from services.common.config import DatabaseSettings
from services.common.db import Connection, open_pool
from services.intake.batching import GroupCommitter, Rejected
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[psycopg_pool.AsyncConnectionPool[Connection]]:
    pool = await open_pool(DatabaseSettings(database_url=database_url, db_pool_max_size=4))
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE items (n integer PRIMARY KEY CHECK (n >= 0), txid bigint NOT NULL)")
    try:
        yield pool
    finally:
        await pool.close()


async def store(conn: Connection, n: int) -> int:
    """Insert ``n``; the 'rejected' job (n = 7) is refused before touching the database."""
    if n == 7:
        raise Rejected(ValueError("seven is refused"))
    await conn.execute("INSERT INTO items (n, txid) VALUES (%s, txid_current())", (n,))
    return n * 10


async def test_concurrent_jobs_share_transactions_and_all_commit(
    pool: psycopg_pool.AsyncConnectionPool[Connection], database_url: str
) -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(pool, store, max_size=16, max_concurrent=2)

    results = await asyncio.gather(*(committer.submit(n, order=f"{n:04}") for n in range(100) if n != 7))

    assert results == [n * 10 for n in range(100) if n != 7]
    [row] = await fetch_all(database_url, "SELECT count(*) AS n, count(DISTINCT txid) AS transactions FROM items")
    assert row["n"] == 99
    assert row["transactions"] < 99 / 2  # type: ignore[operator]


async def test_a_lone_job_commits_at_once(
    pool: psycopg_pool.AsyncConnectionPool[Connection], database_url: str
) -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(pool, store, max_size=16, max_concurrent=2)

    assert await committer.submit(1, order="1") == 10
    assert await fetch_all(database_url, "SELECT n FROM items") == [{"n": 1}]


async def test_a_failing_job_is_retried_alone_and_fails_only_its_submitter(
    pool: psycopg_pool.AsyncConnectionPool[Connection], database_url: str
) -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(pool, store, max_size=64, max_concurrent=1)
    jobs = [1, 2, -5, 3, 4]  # -5 breaks the CHECK constraint and aborts its batch's transaction

    results = await asyncio.gather(
        *(committer.submit(n, order=str(i)) for i, n in enumerate(jobs)), return_exceptions=True
    )

    assert results[:2] == [10, 20]
    assert results[3:] == [30, 40]
    assert isinstance(results[2], psycopg.errors.CheckViolation)
    assert await fetch_all(database_url, "SELECT n FROM items ORDER BY n") == [{"n": n} for n in (1, 2, 3, 4)]


async def test_a_rejected_job_leaves_its_batch_alone(
    pool: psycopg_pool.AsyncConnectionPool[Connection], database_url: str
) -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(pool, store, max_size=64, max_concurrent=1)

    results = await asyncio.gather(*(committer.submit(n, order=str(n)) for n in (5, 6, 7, 8)), return_exceptions=True)

    assert results[0:2] == [50, 60]
    assert results[3] == 80
    assert isinstance(results[2], ValueError)
    [row] = await fetch_all(database_url, "SELECT count(DISTINCT txid) AS transactions FROM items")
    assert row == {"transactions": 1}


async def test_an_outage_reaches_every_submitter(database_url: str) -> None:
    settings = DatabaseSettings(database_url=database_url, db_connect_timeout_s=1.0)
    pool = await open_pool(settings)
    committer: GroupCommitter[int, int] = GroupCommitter(pool, store, max_size=8, max_concurrent=1)
    await pool.close()

    results = await asyncio.gather(*(committer.submit(n, order=str(n)) for n in range(3)), return_exceptions=True)

    assert all(isinstance(r, Exception) for r in results)
