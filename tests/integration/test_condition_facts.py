"""What the scheduler's conditions see for a batch of leads (``load_condition_facts``), on a real
PostgreSQL: each lead's own events, newest first, without the scheduler's bookkeeping; the lead's row
only where a condition reads ``lead``; nothing for a lead whose row is read and no longer exists."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import psycopg_pool
import pytest

from services.common.conditions import MAX_EVENTS, EventFact, LeadFact
from services.common.config import DatabaseSettings
from services.common.db import Connection, open_pool, transaction
from services.scheduler.facts import load_condition_facts

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]
NOW = datetime.fromisoformat("2026-01-14T10:00:00+00:00")


@pytest.fixture
async def pool(migrated_database_url: str) -> AsyncIterator[Pool]:
    pool = await open_pool(DatabaseSettings(database_url=migrated_database_url, db_pool_max_size=2))
    yield pool
    await pool.close()


async def add_lead(conn: Connection, events: list[tuple[str, int]]) -> uuid.UUID:
    """A lead with ``events`` as (type, minutes before NOW)."""
    lead_id = uuid.uuid4()
    address = f"{lead_id}@Example.org"
    await conn.execute(
        """INSERT INTO leads (id, email, email_normalized, source, consent_marketing, first_name, locale,
                              tags, metadata, created_at)
           VALUES (%s, %s, %s, 'website', true, 'Ada', 'de-DE', ARRAY['vip'], %s::jsonb, %s)""",
        (lead_id, address, address.lower(), json.dumps({"plan": "pro"}), NOW - timedelta(days=1)),
    )
    for kind, minutes in events:
        await conn.execute(
            "INSERT INTO events (lead_id, type, occurred_at, properties) VALUES (%s, %s, %s, %s::jsonb)",
            (lead_id, kind, NOW - timedelta(minutes=minutes), json.dumps({"n": minutes})),
        )
    return lead_id


async def test_each_lead_sees_its_own_newest_events_and_its_row_only_where_a_condition_reads_lead(
    pool: Pool,
) -> None:
    async with transaction(pool) as conn:
        reader = await add_lead(conn, [("sent", 30), ("purchased", 5), ("step.skipped", 1), ("opened", 10)])
        quiet = await add_lead(conn, [])
        other = await add_lead(conn, [("opened", 2)])
        gone = uuid.uuid4()

        facts = await load_condition_facts(
            conn, [reader, quiet, other, gone, reader], NOW, lead_rows=[reader, quiet, gone]
        )

    assert set(facts) == {reader, quiet, other}
    assert [(e.type, e.at, e.properties) for e in facts[reader].events] == [
        ("purchased", NOW - timedelta(minutes=5), {"n": 5}),
        ("opened", NOW - timedelta(minutes=10), {"n": 10}),
        ("sent", NOW - timedelta(minutes=30), {"n": 30}),
    ]
    assert facts[reader].events[0] == EventFact(type="purchased", at=NOW - timedelta(minutes=5), properties={"n": 5})
    assert facts[reader].lead == LeadFact(
        domain="example.org",
        source="website",
        accepted_at=NOW - timedelta(days=1),
        first_name="Ada",
        locale="de-DE",
        tags=["vip"],
        metadata={"plan": "pro"},
    )
    assert facts[quiet].events == []
    assert facts[quiet].lead is not None
    assert [e.type for e in facts[other].events] == ["opened"]
    assert facts[other].lead is None
    assert all(f.now == NOW for f in facts.values())


async def test_an_empty_batch_reads_nothing(pool: Pool) -> None:
    async with transaction(pool) as conn:
        assert await load_condition_facts(conn, [], NOW) == {}


async def test_only_the_types_the_conditions_read_come_back_from_the_same_newest_window(pool: Pool) -> None:
    """The filter applies inside each lead's newest MAX_EVENTS events (what a condition sees is the same
    with and without it), and the lead's row still comes when its newest event is filtered out."""
    async with transaction(pool) as conn:
        reader = await add_lead(conn, [("sent", 1), ("purchased", 5), ("opened", 10), ("purchased", 20)])
        unread = await add_lead(conn, [("sent", 1), ("opened", 2)])
        # A purchase older than MAX_EVENTS newer events is outside what any condition sees, filtered or not.
        buried = await add_lead(conn, [("purchased", 100_000)])
        await conn.execute(
            """INSERT INTO events (lead_id, type, occurred_at)
               SELECT %s, 'sent', %s - make_interval(mins => g) FROM generate_series(1, %s) g""",
            (buried, NOW, MAX_EVENTS),
        )

        leads = [reader, unread, buried]
        filtered = await load_condition_facts(conn, leads, NOW, lead_rows=leads, event_types={"purchased"})
        everything = await load_condition_facts(conn, leads, NOW, lead_rows=leads)
        nothing = await load_condition_facts(conn, leads, NOW, lead_rows=[reader], event_types=set())

    assert [(e.type, e.at) for e in filtered[reader].events] == [
        ("purchased", NOW - timedelta(minutes=5)),
        ("purchased", NOW - timedelta(minutes=20)),
    ]
    assert [e for e in everything[reader].events if e.type == "purchased"] == list(filtered[reader].events)
    assert filtered[unread].events == []
    assert filtered[buried].events == []
    assert len(everything[buried].events) == MAX_EVENTS
    assert all(e.type == "sent" for e in everything[buried].events)
    assert all(filtered[lead].lead == everything[lead].lead is not None for lead in leads)
    assert {lead: facts.events for lead, facts in nothing.items()} == {reader: [], unread: [], buried: []}
    assert nothing[reader].lead == everything[reader].lead
    assert nothing[unread].lead is None
