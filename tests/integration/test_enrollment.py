"""Enrolling leads and emitting due steps, on a real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg_pool
import pytest

from proto.sequence import SequenceResource
from services.common.config import DatabaseSettings
from services.common.db import Connection, open_pool, transaction
from services.common.sequences import apply_sequence, parse_sequence_document
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead
from tests.support.platform import apply_examples, fetch_all

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]


@pytest.fixture
async def pool(migrated_database_url: str) -> AsyncIterator[Pool]:
    await apply_examples(migrated_database_url)
    pool = await open_pool(DatabaseSettings(database_url=migrated_database_url))
    yield pool
    await pool.close()


async def _lead(
    pool: Pool, *, source: str = "website", consent: bool = True, tags: list[str] | None = None
) -> uuid.UUID:
    lead_id = uuid.uuid4()
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, first_name, source, tags, consent_marketing)
               VALUES (%s, %s, %s, 'Ada', %s, %s, %s)""",
            (lead_id, f"{lead_id}@example.com", f"{lead_id}@example.com", source, tags or [], consent),
        )
    return lead_id


def _sequence(name: str, **spec: object) -> SequenceResource:
    document = {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": name},
        "spec": {
            "trigger": {"sources": ["meetup"]},
            "steps": [{"name": "only", "delay": "0s", "subject": "Hi", "text": "Hello"}],
            **spec,
        },
    }
    return parse_sequence_document(document, name)


async def test_lead_enrolls_into_matching_sequence_once(pool: Pool) -> None:
    lead = await _lead(pool)

    async with transaction(pool) as conn:
        first = await enroll_lead(conn, lead)
    async with transaction(pool) as conn:
        again = await enroll_lead(conn, lead)

    assert len(first) == 1
    assert again == []
    rows = await fetch_all(pool.conninfo, "SELECT lead_id, status, next_step FROM enrollments")
    assert rows == [{"lead_id": lead, "status": "active", "next_step": 0}]


async def test_lead_from_other_source_or_without_consent_is_not_enrolled(pool: Pool) -> None:
    other_source = await _lead(pool, source="partner")
    no_consent = await _lead(pool, consent=False)

    async with transaction(pool) as conn:
        assert await enroll_lead(conn, other_source) == []
        assert await enroll_lead(conn, no_consent) == []


async def test_sequence_without_consent_requirement_enrolls_lead_without_consent(pool: Pool) -> None:
    async with transaction(pool) as conn:
        await apply_sequence(conn, _sequence("reminder", requireConsent=False))
    lead = await _lead(pool, source="meetup", consent=False)

    async with transaction(pool) as conn:
        assert len(await enroll_lead(conn, lead)) == 1


async def test_trigger_by_tag_enrolls_lead_with_that_tag(pool: Pool) -> None:
    async with transaction(pool) as conn:
        await apply_sequence(conn, _sequence("vip", trigger={"tags": ["vip"]}))
    lead = await _lead(pool, source="partner", tags=["vip"])

    async with transaction(pool) as conn:
        assert len(await enroll_lead(conn, lead)) == 1


async def test_due_step_is_emitted_once_and_the_enrollment_advances(pool: Pool) -> None:
    lead = await _lead(pool)
    async with transaction(pool) as conn:
        [enrollment] = await enroll_lead(conn, lead)

    async with transaction(pool) as conn:
        emitted = await emit_due_steps(conn, limit=10, topic="email.dispatch")
    async with transaction(pool) as conn:
        again = await emit_due_steps(conn, limit=10, topic="email.dispatch")

    assert [(e.enrollment_id, e.step_position) for e in emitted] == [(enrollment, 0)]
    assert again == []  # the welcome sequence's second step waits 48 hours
    messages = await fetch_all(pool.conninfo, "SELECT id, status, step_position FROM messages")
    assert messages == [{"id": emitted[0].message_id, "status": "queued", "step_position": 0}]
    outbox = await fetch_all(pool.conninfo, "SELECT topic, key FROM outbox")
    assert outbox == [{"topic": "email.dispatch", "key": str(enrollment)}]
    [state] = await fetch_all(
        pool.conninfo,
        "SELECT next_step, status, next_run_at > now() + interval '47 hours' AS later FROM enrollments",
    )
    assert state == {"next_step": 1, "status": "active", "later": True}


async def test_enrollment_completes_after_its_last_step(pool: Pool) -> None:
    async with transaction(pool) as conn:
        await apply_sequence(conn, _sequence("single"))
    lead = await _lead(pool, source="meetup")
    async with transaction(pool) as conn:
        await enroll_lead(conn, lead)
        await emit_due_steps(conn, limit=10, topic="email.dispatch")

    rows = await fetch_all(pool.conninfo, "SELECT status, next_run_at FROM enrollments")
    assert rows == [{"status": "completed", "next_run_at": None}]


async def test_paused_sequence_holds_due_steps_until_resumed(pool: Pool) -> None:
    async with transaction(pool) as conn:
        await apply_sequence(conn, _sequence("held", paused=True))
    lead = await _lead(pool, source="meetup")
    async with transaction(pool) as conn:
        await enroll_lead(conn, lead)
        assert await emit_due_steps(conn, limit=10, topic="email.dispatch") == []

    async with transaction(pool) as conn:
        await apply_sequence(conn, _sequence("held", paused=False))
        assert len(await emit_due_steps(conn, limit=10, topic="email.dispatch")) == 1


async def test_changed_spec_becomes_a_new_revision_and_unchanged_spec_does_not(pool: Pool) -> None:
    async with transaction(pool) as conn:
        first = await apply_sequence(conn, _sequence("versions"))
        same = await apply_sequence(conn, _sequence("versions"))
        changed = await apply_sequence(
            conn, _sequence("versions", steps=[{"name": "only", "subject": "Hello again", "text": "Hi"}])
        )

    assert (first.revision, same.revision, same.changed, changed.revision) == (1, 1, False, 2)
