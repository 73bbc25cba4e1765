"""Enrolling a batch of leads at once (``enroll_leads``, what the scheduler does per Kafka fetch), on a
real PostgreSQL: the same enrollments as one lead at a time, a repeated lead once, ``trigger.when``
per lead, a number of statements that does not grow with the batch, and the leads locked in id order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import psycopg_pool
import pytest

from proto.messages import AnyMessage, LeadAccepted
from services.common.clock import database_now, utcnow
from services.common.config import DatabaseSettings
from services.common.db import Connection, open_pool, transaction
from services.common.sequences import apply_sequence, parse_sequence_document
from services.scheduler.enrollment import enroll_lead, enroll_leads
from services.scheduler.service import enroll_accepted_leads
from tests.support.platform import fetch_all
from tests.support.statements import counting_statements

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]
LIFECYCLE = "lifecycle.events"


@pytest.fixture
async def pool(migrated_database_url: str) -> AsyncIterator[Pool]:
    # One connection: the statement count traces the connection the scheduler's handler gets.
    settings = DatabaseSettings(database_url=migrated_database_url, db_pool_min_size=1, db_pool_max_size=1)
    opened = await open_pool(settings)
    yield opened
    await opened.close()


async def apply(pool: Pool, name: str, **spec: Any) -> None:
    document = {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": name},
        "spec": {"steps": [{"name": "hello", "delay": "1h", "subject": "Hi", "text": "Hello"}], **spec},
    }
    async with transaction(pool) as conn:
        await apply_sequence(conn, parse_sequence_document(document, name))


async def apply_sequences(pool: Pool) -> None:
    await apply(pool, "open", trigger={"sources": ["website"]})
    await apply(pool, "partners", trigger={"sources": ["partner"]}, requireConsent=False)
    await apply(pool, "vip", trigger={"tags": ["vip"]})
    await apply(pool, "confirmed-only", trigger={"sources": ["website"]}, doubleOptIn=True)
    await apply(pool, "german", trigger={"sources": ["website"], "when": "lead.locale.startsWith('de')"})


# What each kind of lead enrolls into, by the rules (consent, double opt-in, suppression, leaving one
# Sequence, trigger.when); every kind is created twice, once per way of enrolling.
KINDS: dict[str, set[str]] = {
    "plain": {"open"},
    "no-consent": set(),
    "partner-no-consent": {"partners"},
    "vip-partner": {"partners", "vip"},
    "suppressed": set(),
    "left-open": {"confirmed-only"},
    "unconfirmed": set(),
    "confirmed": {"open", "confirmed-only"},
    "german": {"open", "german"},
}


async def add_lead(pool: Pool, kind: str) -> uuid.UUID:
    lead_id = uuid.uuid4()
    address = f"{lead_id}@example.com"
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, tags, consent_marketing, locale,
                                  confirmation_required, confirmed_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)""",
            (
                lead_id,
                address,
                address,
                "partner" if kind.startswith(("partner", "vip")) else "website",
                ["vip"] if kind == "vip-partner" else [],
                kind not in {"no-consent", "partner-no-consent"},
                "de-DE" if kind == "german" else "en-GB",
                kind in {"unconfirmed", "confirmed"},
                kind in {"confirmed", "left-open"},
            ),
        )
        if kind == "suppressed":
            await conn.execute(
                "INSERT INTO suppressions (email_hash, reason) SELECT email_hash, 'manual' FROM leads WHERE id = %s",
                (lead_id,),
            )
        if kind == "left-open":
            await conn.execute(
                """INSERT INTO sequence_unsubscribes (email_hash, sequence_id)
                   SELECT l.email_hash, s.id FROM leads l, sequences s WHERE l.id = %s AND s.name = 'open'""",
                (lead_id,),
            )
    return lead_id


async def enrolled(pool: Pool, leads: dict[uuid.UUID, str]) -> dict[str, set[tuple[Any, ...]]]:
    """Each kind's enrollments (and whether the lead is marked enrolled), as comparable values."""
    rows = await fetch_all(
        pool.conninfo,
        """SELECT l.id AS lead_id, l.enrolled_at IS NOT NULL AS marked, s.name, e.revision, e.next_step,
                  e.next_run_at, e.status, e.timezone
           FROM leads l
           LEFT JOIN enrollments e ON e.lead_id = l.id
           LEFT JOIN sequences s ON s.id = e.sequence_id
           WHERE l.id = ANY(%s)""",
        list(leads),
    )
    kinds: dict[str, set[tuple[Any, ...]]] = {kind: set() for kind in leads.values()}
    for row in rows:
        kinds[leads[row["lead_id"]]].add(  # type: ignore[index]
            (row["marked"], row["name"], row["revision"], row["next_step"], row["next_run_at"], row["status"])
        )
    return kinds


def names(kinds: dict[str, set[tuple[Any, ...]]]) -> dict[str, set[str]]:
    return {kind: {str(row[1]) for row in rows if row[1] is not None} for kind, rows in kinds.items()}


async def test_a_batch_enrolls_exactly_what_enrolling_its_leads_one_by_one_enrolls(pool: Pool) -> None:
    await apply_sequences(pool)
    one_by_one = {await add_lead(pool, kind): kind for kind in KINDS}
    batch = {await add_lead(pool, kind): kind for kind in KINDS}
    async with transaction(pool) as conn:
        now = await database_now(conn)

    async with transaction(pool) as conn:
        singles = {lead: await enroll_lead(conn, lead, now=now) for lead in one_by_one}
    async with transaction(pool) as conn:
        together = await enroll_leads(conn, list(batch), now=now)

    assert names(await enrolled(pool, batch)) == KINDS
    assert await enrolled(pool, batch) == await enrolled(pool, one_by_one)
    assert {batch[lead]: len(ids) for lead, ids in together.items()} == {
        one_by_one[lead]: len(ids) for lead, ids in singles.items()
    }
    # Every lead of the batch is marked enrolled, matched or not.
    assert all(marked for rows in (await enrolled(pool, batch)).values() for marked, *_ in rows)


async def test_a_lead_repeated_in_a_batch_is_enrolled_and_announced_once(pool: Pool) -> None:
    await apply_sequences(pool)
    lead, other = await add_lead(pool, "plain"), await add_lead(pool, "german")

    async with transaction(pool) as conn:
        created = await enroll_leads(conn, [lead, other, lead], lifecycle_topic=LIFECYCLE)

    assert len(created[lead]) == 1
    assert len(created[other]) == 2
    announced = await fetch_all(pool.conninfo, "SELECT key FROM outbox WHERE topic = %s", LIFECYCLE)
    assert sorted(str(row["key"]) for row in announced) == sorted([str(lead), str(other), str(other)])


async def test_trigger_when_is_evaluated_per_lead_within_one_batch(pool: Pool) -> None:
    await apply(pool, "german", trigger={"sources": ["website"], "when": "lead.locale.startsWith('de')"})
    english, german = await add_lead(pool, "plain"), await add_lead(pool, "german")

    async with transaction(pool) as conn:
        created = await enroll_leads(conn, [english, german])

    assert (len(created[english]), len(created[german])) == (0, 1)
    rows = await fetch_all(pool.conninfo, "SELECT lead_id FROM enrollments")
    assert rows == [{"lead_id": german}]


def accepted(lead_id: uuid.UUID) -> AnyMessage:
    return LeadAccepted(id=lead_id, occurred_at=utcnow(), lead_id=lead_id, source="website")


async def statements_to_enroll(pool: Pool, leads: list[uuid.UUID]) -> int:
    """The statements the scheduler's ``lead.accepted`` handler sends for one fetch of ``leads``."""
    async with pool.connection() as conn:
        traced = conn
    with counting_statements(traced) as count:
        await enroll_accepted_leads(pool, asyncio.Event(), LIFECYCLE)([accepted(lead) for lead in leads])
    return count.value


async def test_the_statements_to_enroll_a_fetch_do_not_grow_with_its_size(pool: Pool) -> None:
    await apply_sequences(pool)  # a gated Sequence among them: the facts statement runs too
    await statements_to_enroll(pool, [await add_lead(pool, "german")])  # the revisions' rules are cached

    one = await statements_to_enroll(pool, [await add_lead(pool, "german")])
    many = await statements_to_enroll(pool, [await add_lead(pool, kind) for kind in [*KINDS, *KINDS]])

    assert one > 0
    assert many == one, f"one lead: {one} statements, {2 * len(KINDS)} leads: {many}"
    rows = await fetch_all(pool.conninfo, "SELECT count(*) AS n FROM enrollments")
    assert rows == [{"n": 2 * 2 + 2 * sum(len(names) for names in KINDS.values())}]


async def test_a_batch_locks_its_leads_in_id_order_whatever_their_order_in_the_table(
    pool: Pool, migrated_database_url: str
) -> None:
    # The larger id is stored first, so a scan in the table's order would reach it first.
    smaller, larger = sorted([uuid.uuid4(), uuid.uuid4()])
    for lead in (larger, smaller):
        async with transaction(pool) as conn:
            await conn.execute(
                """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
                   VALUES (%s, %s, %s, 'website', true)""",
                (lead, f"{lead}@example.com", f"{lead}@example.com"),
            )
    # Two more sessions, each in a transaction of its own (not autocommit).
    holder = await psycopg.AsyncConnection.connect(migrated_database_url)
    prober = await psycopg.AsyncConnection.connect(migrated_database_url)
    try:
        await holder.execute("SELECT 1 FROM leads WHERE id = %s FOR UPDATE", (smaller,))  # another transaction
        enrolling = asyncio.create_task(enroll_in_own_transaction(pool, [larger, smaller]))
        while not enrolling.done() and not await waits_for_a_lock(prober):
            await asyncio.sleep(0.01)
        assert not enrolling.done()  # it waits for the smaller id

        # Blocked on the smaller id, it has not locked the larger one yet: no lead held while waiting.
        await prober.execute("SELECT 1 FROM leads WHERE id = %s FOR UPDATE NOWAIT", (larger,))
        await prober.rollback()
        await holder.rollback()
        await enrolling
    finally:
        await holder.close()
        await prober.close()

    rows = await fetch_all(migrated_database_url, "SELECT count(*) AS n FROM leads WHERE enrolled_at IS NOT NULL")
    assert rows == [{"n": 2}]


async def enroll_in_own_transaction(pool: Pool, leads: list[uuid.UUID]) -> None:
    async with transaction(pool) as conn:
        await enroll_leads(conn, leads)


async def waits_for_a_lock(conn: psycopg.AsyncConnection[Any]) -> bool:
    row = await (await conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")).fetchone()
    await conn.rollback()
    return row is not None and row[0] > 0
