"""retry-failed at scale, on a real PostgreSQL: its queries use their partial indexes on a
100,000-message table, and a 100,000-message retry backlog is worked off in bounded batches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from services.common.db import transaction
from services.jobs.retry_failed import (
    DUE_RETRIES,
    STUCK_QUEUED,
    STUCK_SENDING,
    UNENROLLED_LEADS,
    requeue_due_retries,
    retry_failed,
)
from services.jobs.runner import in_batches
from tests.support.jobs import Pool, bulk_messages, insert_lead, job_context, job_settings
from tests.support.platform import apply_examples, fetch_all

pytestmark = pytest.mark.integration

ROWS = 100_000


@pytest.fixture
async def pool(migrated_database_url: str) -> AsyncIterator[Pool]:
    await apply_examples(migrated_database_url)
    async with job_context(job_settings(migrated_database_url, db_statement_timeout_s=120)) as ctx:
        yield ctx.pool


def _plan_nodes(plan: dict[str, object]) -> list[dict[str, object]]:
    nodes = [plan]
    for child in plan.get("Plans", []):  # type: ignore[attr-defined]
        nodes += _plan_nodes(child)
    return nodes


async def _explain(pool: Pool, query: str, params: dict[str, object]) -> list[dict[str, object]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(("EXPLAIN (FORMAT JSON) " + query).encode(), params)
        row = await cursor.fetchone()
    assert row is not None
    [document] = row["QUERY PLAN"] if isinstance(row["QUERY PLAN"], list) else json.loads(str(row["QUERY PLAN"]))
    return _plan_nodes(document["Plan"])


async def test_reconcile_queries_use_partial_indexes_on_a_100k_message_table(pool: Pool) -> None:
    # A realistic table: almost everything sent, a little of everything the job looks for.
    await bulk_messages(pool, ROWS - 300, status="sent")
    for status in ("retrying", "queued", "sending"):
        await bulk_messages(pool, 100, status=status)
    for _ in range(5):
        await insert_lead(pool)  # accepted, not yet handled by the scheduler
    async with pool.connection() as conn:
        await conn.execute("ANALYZE")
    [count] = await fetch_all(pool.conninfo, "SELECT count(*) AS n FROM messages")
    assert count["n"] == ROWS

    age = {"age": timedelta(minutes=15), "limit": 500}
    expected = {
        DUE_RETRIES: ("messages", "messages_retry_due_idx"),
        STUCK_QUEUED: ("messages", "messages_queued_idx"),
        STUCK_SENDING: ("messages", "messages_sending_idx"),
        UNENROLLED_LEADS: ("leads", "leads_unenrolled_idx"),
    }
    for query, (table, index) in expected.items():
        nodes = await _explain(pool, query, age)
        scans = {(n.get("Relation Name"), n["Node Type"], n.get("Index Name")) for n in nodes if "Relation Name" in n}
        assert (table, "Seq Scan", None) not in scans, (query, scans)
        assert any(name == index for _, _, name in scans), (query, scans)


async def test_a_100k_retry_backlog_is_processed_in_bounded_batches(pool: Pool, migrated_database_url: str) -> None:
    await bulk_messages(pool, ROWS, status="retrying")
    async with pool.connection() as conn:
        await conn.execute("ANALYZE")
    settings = job_settings(migrated_database_url, db_statement_timeout_s=120, max_attempts=8)

    async with job_context(settings) as ctx:
        counts = await retry_failed(ctx, batch_size=5_000)

    assert counts["requeued"] == ROWS
    assert counts["batches"] == ROWS // 5_000 + 1  # 20 full batches, then an empty one that ends the loop
    [state] = await fetch_all(
        migrated_database_url,
        """SELECT count(*) FILTER (WHERE status = 'queued') AS queued, count(*) AS total,
                  (SELECT count(*) FROM outbox WHERE topic = 'email.dispatch') AS commands,
                  (SELECT count(DISTINCT key) FROM outbox WHERE topic = 'email.dispatch') AS enrollments
           FROM messages""",
    )
    assert state == {"queued": ROWS, "total": ROWS, "commands": ROWS, "enrollments": ROWS}


async def test_concurrent_batches_never_take_the_same_message(pool: Pool, migrated_database_url: str) -> None:
    await bulk_messages(pool, 20_000, status="retrying")

    async def worker() -> int:
        async def step(conn: object) -> int:
            again, dead = await requeue_due_retries(
                conn,  # type: ignore[arg-type]
                limit=1_000,
                max_attempts=8,
                dispatch_topic="email.dispatch",
                events_topic="email.events",
                dlq_topic="email.dispatch.dlq",
            )
            return again + dead

        return sum(await in_batches(pool, step, 1_000))

    done = await asyncio.gather(worker(), worker(), worker())

    assert sum(done) == 20_000
    [state] = await fetch_all(
        migrated_database_url,
        "SELECT count(*) AS commands, count(DISTINCT key) AS distinct_keys FROM outbox WHERE topic = 'email.dispatch'",
    )
    assert state == {"commands": 20_000, "distinct_keys": 20_000}
    async with transaction(pool) as conn:
        cursor = await conn.execute("SELECT count(*) AS n FROM messages WHERE status <> 'queued'")
        assert await cursor.fetchone() == {"n": 0}
