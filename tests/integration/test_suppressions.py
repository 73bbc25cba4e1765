"""Suppressions: idempotent, announced once, and they cancel every active enrollment of the address."""

from __future__ import annotations

import uuid

import pytest

from services.common.config import DatabaseSettings
from services.common.db import connect
from services.common.identity import email_hash, legacy_email_hash
from services.common.suppressions import suppress_address
from services.scheduler.enrollment import enroll_lead
from services.scheduler.suppressions import cancel_enrollments_of
from tests.support.platform import apply_examples, fetch_all

pytestmark = pytest.mark.integration

HASH_KEY = "5e2b9c4a7d1f8e3b6a0c9d2f5e8b1a4c7d0e3f6a"


async def add_lead(database_url: str, email: str) -> uuid.UUID:
    lead_id = uuid.uuid4()
    conn = await connect(DatabaseSettings(database_url=database_url))
    async with conn, conn.transaction():
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
               VALUES (%s, %s, %s, 'website', true)""",
            (lead_id, email, email.lower()),
        )
        await enroll_lead(conn, lead_id)
    return lead_id


async def test_suppressing_twice_keeps_the_first_reason_and_announces_once(migrated_database_url: str) -> None:
    conn = await connect(DatabaseSettings(database_url=migrated_database_url))
    key = email_hash("ada@example.com", HASH_KEY)
    async with conn, conn.transaction():
        first = await suppress_address(conn, key, reason="unsubscribed", detail="link", topic="leads.suppressed")
        second = await suppress_address(conn, key, reason="bounced", detail="webhook", topic="leads.suppressed")

    assert (first, second) == (True, False)
    assert await fetch_all(migrated_database_url, "SELECT reason FROM suppressions") == [{"reason": "unsubscribed"}]
    assert await fetch_all(migrated_database_url, "SELECT key FROM outbox") == [{"key": key}]


async def test_every_active_enrollment_of_the_address_is_cancelled_and_only_those(migrated_database_url: str) -> None:
    await apply_examples(migrated_database_url)
    first = await add_lead(migrated_database_url, "Ada@example.com")
    again = await add_lead(migrated_database_url, "ada@example.com")  # the same person, a later lead
    other = await add_lead(migrated_database_url, "grace@example.com")
    conn = await connect(DatabaseSettings(database_url=migrated_database_url))

    async with conn, conn.transaction():
        # Leads written without a keyed hash (as a previous release did) carry the unkeyed one.
        ada = legacy_email_hash("ada@example.com")
        cancelled = await cancel_enrollments_of(conn, ada, reason="bounced", lifecycle_topic="lifecycle.events")
        repeated = await cancel_enrollments_of(conn, ada, reason="bounced", lifecycle_topic="lifecycle.events")

    assert (cancelled, repeated) == (2, 0)
    rows = await fetch_all(migrated_database_url, "SELECT lead_id, status FROM enrollments ORDER BY status")
    assert {r["lead_id"]: r["status"] for r in rows} == {first: "cancelled", again: "cancelled", other: "active"}
    # Each cancelled enrollment announced once, as exited for the suppression's reason.
    announced = await fetch_all(
        migrated_database_url,
        """SELECT key, convert_from(payload, 'UTF8')::jsonb #>> '{outcome}' AS outcome,
                  convert_from(payload, 'UTF8')::jsonb #>> '{reason}' AS reason
           FROM outbox WHERE topic = 'lifecycle.events' ORDER BY key""",
    )
    assert announced == sorted(
        ({"key": str(lead), "outcome": "exited", "reason": "bounced"} for lead in (first, again)),
        key=lambda row: row["key"],
    )


async def test_a_lead_written_without_a_keyed_hash_gets_the_unkeyed_one_marked_for_rehash(
    migrated_database_url: str,
) -> None:
    lead_id = await add_lead(migrated_database_url, "Lin@Example.com")

    rows = await fetch_all(
        migrated_database_url, "SELECT email_hash, email_hash_keyed FROM leads WHERE id = %s", lead_id
    )

    assert rows == [{"email_hash": legacy_email_hash("lin@example.com"), "email_hash_keyed": False}]
