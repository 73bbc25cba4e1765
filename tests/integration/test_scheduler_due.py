"""The scheduler on a real PostgreSQL with an injected clock: send windows, pause, revision policies,
deletion, and two schedulers sharing 10,000 due enrollments."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg_pool
import pytest

from services.common.config import DatabaseSettings
from services.common.db import Connection, open_pool, transaction
from services.common.identity import legacy_email_hash
from services.common.sequences import apply_sequence, delete_sequence, parse_sequence_document
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead, message_id
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]
TOPIC = "email.dispatch"
# Wednesday 14 January 2026, 10:00 UTC.
WEDNESDAY = datetime(2026, 1, 14, 10, 0, tzinfo=UTC)


@pytest.fixture
async def pool(migrated_database_url: str) -> AsyncIterator[Pool]:
    pool = await open_pool(DatabaseSettings(database_url=migrated_database_url, db_pool_max_size=4))
    yield pool
    await pool.close()


def sequence(name: str = "drip", steps: list[dict[str, Any]] | None = None, **spec: Any) -> Any:
    document = {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": name},
        "spec": {
            "trigger": {"sources": ["meetup"]},
            "steps": steps
            or [
                {"name": "first", "delay": "0s", "subject": "One", "text": "1"},
                {"name": "second", "delay": "1d", "subject": "Two", "text": "2"},
                {"name": "third", "delay": "1d", "subject": "Three", "text": "3"},
            ],
            **spec,
        },
    }
    return parse_sequence_document(document, name)


async def apply(pool: Pool, resource: Any) -> int:
    async with transaction(pool) as conn:
        return (await apply_sequence(conn, resource)).revision


async def add_lead(pool: Pool, *, timezone: str | None = None, email: str | None = None) -> uuid.UUID:
    lead_id = uuid.uuid4()
    address = email or f"{lead_id}@example.com"
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, consent_marketing, timezone)
               VALUES (%s, %s, %s, 'meetup', true, %s)""",
            (lead_id, address, address.lower(), timezone),
        )
    return lead_id


async def enroll(pool: Pool, lead: uuid.UUID, now: datetime) -> list[uuid.UUID]:
    async with transaction(pool) as conn:
        return await enroll_lead(conn, lead, now=now)


async def emit(pool: Pool, now: datetime, limit: int = 100) -> list[Any]:
    async with transaction(pool) as conn:
        return await emit_due_steps(conn, limit=limit, topic=TOPIC, now=now)


async def enrollment_state(pool: Pool) -> list[dict[str, object]]:
    return await fetch_all(pool.conninfo, "SELECT revision, next_step, next_run_at, status FROM enrollments")


def test_message_ids_are_deterministic_from_enrollment_step_and_revision() -> None:
    enrollment = uuid.uuid4()

    assert message_id(enrollment, 1, 2) == message_id(enrollment, 1, 2)
    assert len({message_id(enrollment, 1, 2), message_id(enrollment, 2, 2), message_id(enrollment, 1, 3)}) == 3


async def test_steps_follow_their_delays_on_the_injected_clock(pool: Pool) -> None:
    await apply(pool, sequence())
    lead = await add_lead(pool)
    [enrollment] = await enroll(pool, lead, WEDNESDAY)

    first = await emit(pool, WEDNESDAY)
    early = await emit(pool, WEDNESDAY + timedelta(hours=23))
    second = await emit(pool, WEDNESDAY + timedelta(days=1))

    assert [(s.enrollment_id, s.step_position) for s in first] == [(enrollment, 0)]
    assert early == []
    assert [s.step_position for s in second] == [1]
    [state] = await enrollment_state(pool)
    assert state["next_run_at"] == WEDNESDAY + timedelta(days=2)


async def test_first_step_is_scheduled_into_the_window_in_the_leads_time_zone(pool: Pool) -> None:
    await apply(pool, sequence(sendWindow={"start": "09:00", "end": "17:00", "timezone": "lead"}))
    lead = await add_lead(pool, timezone="America/New_York")

    await enroll(pool, lead, WEDNESDAY)  # 05:00 in New York

    [state] = await enrollment_state(pool)
    assert state["next_run_at"] == datetime(2026, 1, 14, 14, 0, tzinfo=UTC)  # 09:00 EST


async def test_a_step_due_outside_its_window_is_held_until_the_window_opens(pool: Pool) -> None:
    await apply(pool, sequence(sendWindow={"start": "09:00", "end": "17:00", "timezone": "Europe/Berlin"}))
    lead = await add_lead(pool)
    await enroll(pool, lead, WEDNESDAY)
    await emit(pool, WEDNESDAY)  # step 1 at 11:00 Berlin; step 2 due Thursday 11:00 Berlin
    thursday_night = datetime(2026, 1, 15, 20, 0, tzinfo=UTC)  # 21:00 Berlin: held by an outage until now

    held = await emit(pool, thursday_night)
    opened = await emit(pool, datetime(2026, 1, 16, 8, 0, tzinfo=UTC))  # Friday 09:00 Berlin

    assert held == []
    assert [s.step_position for s in opened] == [1]


async def test_a_suppressed_address_is_not_enrolled(pool: Pool) -> None:
    await apply(pool, sequence())
    lead = await add_lead(pool, email="gone@example.com")
    async with transaction(pool) as conn:
        await conn.execute(
            "INSERT INTO suppressions (email_hash, reason) VALUES (%s, 'unsubscribed')",
            (legacy_email_hash("gone@example.com"),),
        )

    assert await enroll(pool, lead, WEDNESDAY) == []


async def test_a_paused_sequence_holds_every_due_step_and_resumes_without_loss(pool: Pool) -> None:
    await apply(pool, sequence(paused=True))
    leads = [await add_lead(pool) for _ in range(30)]
    for lead in leads:
        await enroll(pool, lead, WEDNESDAY)

    held = await emit(pool, WEDNESDAY + timedelta(days=3))
    await apply(pool, sequence(paused=False))
    resumed = await emit(pool, WEDNESDAY + timedelta(days=3))

    assert held == []
    assert len(resumed) == 30
    assert {s.step_position for s in resumed} == {0}  # nothing skipped: every lead gets step 1 first
    messages = await fetch_all(pool.conninfo, "SELECT count(*) AS n FROM messages")
    assert messages == [{"n": 30}]


async def test_latest_policy_moves_in_flight_leads_to_the_step_of_the_same_name(pool: Pool) -> None:
    first_revision = await apply(pool, sequence())
    lead = await add_lead(pool)
    [enrollment] = await enroll(pool, lead, WEDNESDAY)
    await emit(pool, WEDNESDAY)  # "first" sent; "second" is next
    edited = [
        {"name": "first", "subject": "One", "text": "1"},
        {"name": "intro", "delay": "1h", "subject": "New", "text": "n"},
        {"name": "third", "delay": "1d", "subject": "Three, reworded", "text": "3"},
    ]

    second_revision = await apply(pool, sequence(steps=edited))
    [sent] = await emit(pool, WEDNESDAY + timedelta(days=1))

    assert (first_revision, second_revision) == (1, 2)
    # "second" was removed: the lead skips it and continues at "third" (position 2 of revision 2).
    assert (sent.revision, sent.step_position) == (2, 2)
    assert sent.message_id == message_id(enrollment, 2, 2)
    [state] = await enrollment_state(pool)
    assert (state["revision"], state["status"]) == (2, "completed")


async def test_latest_policy_completes_leads_whose_remaining_steps_were_all_removed(pool: Pool) -> None:
    await apply(pool, sequence())
    lead = await add_lead(pool)
    await enroll(pool, lead, WEDNESDAY)
    await emit(pool, WEDNESDAY)

    await apply(pool, sequence(steps=[{"name": "first", "subject": "One", "text": "1"}]))

    [state] = await enrollment_state(pool)
    assert (state["status"], state["next_run_at"]) == ("completed", None)


async def test_pinned_policy_lets_in_flight_leads_finish_their_revision(pool: Pool) -> None:
    await apply(pool, sequence(revisionPolicy="Pinned"))
    early = await add_lead(pool)
    await enroll(pool, early, WEDNESDAY)
    await emit(pool, WEDNESDAY)

    await apply(pool, sequence(revisionPolicy="Pinned", steps=[{"name": "only", "subject": "New", "text": "n"}]))
    late = await add_lead(pool)
    await enroll(pool, late, WEDNESDAY + timedelta(hours=1))
    sent = await emit(pool, WEDNESDAY + timedelta(days=1))

    assert sorted((s.revision, s.step_position) for s in sent) == [(1, 1), (2, 0)]
    rows = await fetch_all(pool.conninfo, "SELECT lead_id, revision FROM enrollments ORDER BY revision")
    assert rows == [{"lead_id": early, "revision": 1}, {"lead_id": late, "revision": 2}]


async def test_deleting_a_sequence_cancels_enrollments_and_skips_queued_messages(pool: Pool) -> None:
    await apply(pool, sequence())
    lead = await add_lead(pool)
    await enroll(pool, lead, WEDNESDAY)
    await emit(pool, WEDNESDAY)

    async with transaction(pool) as conn:
        deleted = await delete_sequence(conn, "default", "drip")
    later_lead = await add_lead(pool)

    assert (deleted.cancelled_enrollments, deleted.skipped_messages) == (1, 1)
    assert await enroll(pool, later_lead, WEDNESDAY) == []
    assert await emit(pool, WEDNESDAY + timedelta(days=5)) == []
    rows = await fetch_all(pool.conninfo, "SELECT status FROM messages")
    assert rows == [{"status": "skipped"}]


async def test_two_schedulers_emit_ten_thousand_due_enrollments_exactly_once(migrated_database_url: str) -> None:
    settings = DatabaseSettings(database_url=migrated_database_url, db_pool_max_size=2)
    setup = await open_pool(settings)
    await apply(setup, sequence(steps=[{"name": "only", "subject": "Hi", "text": "hi"}]))
    async with transaction(setup) as conn:
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
               SELECT id, id || '@example.com', id || '@example.com', 'meetup', true
               FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, 10000)) g"""
        )
        await conn.execute(
            """INSERT INTO enrollments (id, lead_id, sequence_id, revision, next_step, next_run_at, status)
               SELECT gen_random_uuid(), l.id, s.id, 1, 0, %s - random() * interval '1 hour', 'active'
               FROM leads l CROSS JOIN sequences s""",
            (WEDNESDAY,),
        )
    await setup.close()
    pools = [await open_pool(settings), await open_pool(settings)]
    start = asyncio.Event()

    async def scheduler(pool: Pool) -> list[Any]:
        await start.wait()
        emitted: list[Any] = []
        while batch := await emit(pool, WEDNESDAY, limit=250):
            emitted.extend(batch)
        return emitted

    try:
        runs = [asyncio.create_task(scheduler(pool)) for pool in pools]
        start.set()
        first, second = await asyncio.gather(*runs)
    finally:
        for pool in pools:
            await pool.close()

    assert len(first) + len(second) == 10000
    assert first, "both schedulers should have claimed work"
    assert second, "both schedulers should have claimed work"
    assert not {s.message_id for s in first} & {s.message_id for s in second}
    [counts] = await fetch_all(
        migrated_database_url,
        """SELECT (SELECT count(*) FROM messages) AS messages,
                  (SELECT count(DISTINCT enrollment_id) FROM messages) AS enrollments,
                  (SELECT count(*) FROM outbox) AS commands,
                  (SELECT count(*) FROM enrollments WHERE status = 'completed') AS completed""",
    )
    assert counts == {"messages": 10000, "enrollments": 10000, "commands": 10000, "completed": 10000}
