"""purge on a real PostgreSQL: what is past its retention goes, in bounded batches; nothing else does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.config import JobSettings
from services.common.db import transaction
from services.jobs.purge import purge
from tests.support.jobs import Pool, insert_lead, job_context, job_settings
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(migrated_database_url: str) -> JobSettings:
    return job_settings(
        migrated_database_url,
        events_retention_days=30,
        outbox_retention_hours=24,
        duplicate_window_hours=24,
        idempotency_ttl_hours=48,
    )


@pytest.fixture
async def pool(settings: JobSettings) -> AsyncIterator[Pool]:
    async with job_context(settings) as ctx:
        yield ctx.pool


async def _counts(pool: Pool) -> dict[str, object]:
    [row] = await fetch_all(
        pool.conninfo,
        """SELECT (SELECT count(*) FROM events) AS events,
                  (SELECT count(*) FROM outbox) AS outbox,
                  (SELECT count(*) FROM lead_identities) AS identities""",
    )
    return row


async def test_rows_past_retention_are_deleted_in_bounded_batches_and_the_rest_kept(
    settings: JobSettings, pool: Pool
) -> None:
    lead = await insert_lead(pool, "old@example.com")
    recent = await insert_lead(pool, "new@example.com")
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO events (lead_id, type, occurred_at)
               SELECT %s, 'opened', now() - interval '31 days' FROM generate_series(1, 250)""",
            (lead,),
        )
        await conn.execute("INSERT INTO events (lead_id, type, occurred_at) VALUES (%s, 'opened', now())", (lead,))
        await conn.execute(
            """INSERT INTO outbox (topic, key, payload, created_at, published_at) VALUES
               ('t', 'old-published', '', now() - interval '3 days', now() - interval '2 days'),
               ('t', 'old-unpublished', '', now() - interval '3 days', NULL),
               ('t', 'recent-published', '', now(), now())"""
        )
        await conn.execute(
            """INSERT INTO lead_identities (email_normalized, lead_id, accepted_at) VALUES
               ('old@example.com', %s, now() - interval '25 hours'), ('new@example.com', %s, now())""",
            (lead, recent),
        )

    async with job_context(settings) as ctx:
        deleted = await purge(ctx, batch_size=100)

    assert deleted == {"events": 250, "outbox": 1, "lead_identities": 1, "idempotency_keys": 0, "unconfirmed_leads": 0}
    assert await _counts(pool) == {"events": 1, "outbox": 2, "identities": 1}
    keys = await fetch_all(pool.conninfo, "SELECT key FROM outbox ORDER BY key")
    assert keys == [{"key": "old-unpublished"}, {"key": "recent-published"}]  # never an unpublished row
    assert await fetch_all(pool.conninfo, "SELECT email_normalized FROM lead_identities") == [
        {"email_normalized": "new@example.com"}
    ]
    async with job_context(settings) as ctx:
        assert await purge(ctx) == {
            "events": 0,
            "outbox": 0,
            "lead_identities": 0,
            "idempotency_keys": 0,
            "unconfirmed_leads": 0,
        }


async def test_idempotency_keys_past_their_ttl_are_purged(settings: JobSettings, pool: Pool) -> None:
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
               VALUES ('00000000-0000-0000-0000-000000000001', 'k@example.com', 'k@example.com', 'website', true)"""
        )
        await conn.execute(
            """INSERT INTO idempotency_keys (scope, key, request_hash, status, lead_id, duplicate, created_at)
               SELECT 'client', k, repeat('a', 64), 202, '00000000-0000-0000-0000-000000000001', false, at
               FROM (VALUES ('old', now() - interval '49 hours'), ('new', now())) AS keys (k, at)"""
        )

    async with job_context(settings) as ctx:
        deleted = await purge(ctx)

    assert deleted["idempotency_keys"] == 1
    assert await fetch_all(pool.conninfo, "SELECT key FROM idempotency_keys") == [{"key": "new"}]
