"""The scheduler's ``lead.accepted`` handler: a fetch's leads are enrolled in one transaction."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from proto.messages import AnyMessage, LeadAccepted
from services.common.clock import utcnow
from services.common.config import DatabaseSettings
from services.common.db import open_pool
from services.scheduler.service import enroll_accepted_leads
from tests.support.jobs import insert_lead
from tests.support.platform import apply_examples, fetch_all

pytestmark = pytest.mark.integration


def accepted(lead_id: uuid.UUID) -> LeadAccepted:
    return LeadAccepted(id=lead_id, occurred_at=utcnow(), lead_id=lead_id, source="website")


async def test_the_leads_of_one_fetch_are_enrolled_in_one_transaction_and_wake_the_ticker(
    migrated_database_url: str,
) -> None:
    await apply_examples(migrated_database_url)
    pool = await open_pool(DatabaseSettings(database_url=migrated_database_url))
    try:
        leads = [await insert_lead(pool) for _ in range(5)]
        due = asyncio.Event()
        messages: list[AnyMessage] = [accepted(lead) for lead in leads]
        await enroll_accepted_leads(pool, due, "lifecycle.events")(messages)
        await enroll_accepted_leads(pool, due, "lifecycle.events")(messages)  # redelivered: nothing new
    finally:
        await pool.close()

    assert due.is_set()
    rows = await fetch_all(migrated_database_url, "SELECT lead_id, created_at FROM enrollments")
    assert {row["lead_id"] for row in rows} == set(leads)
    # now() is the transaction's start: one value for every enrollment means one transaction.
    assert len({row["created_at"] for row in rows}) == 1
    # Each new enrollment announced once, in the same transaction (the redelivery announced nothing).
    announced = await fetch_all(
        migrated_database_url,
        """SELECT key, convert_from(payload, 'UTF8')::jsonb ->> 'type' AS type FROM outbox
           WHERE topic = 'lifecycle.events'""",
    )
    assert sorted(str(row["key"]) for row in announced) == sorted(str(row["lead_id"]) for row in rows)
    assert {row["type"] for row in announced} == {"enrollment.started"}
