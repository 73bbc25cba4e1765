"""retry-failed on a real PostgreSQL: due retries go back to queued with a command, spent ones die and
are dead-lettered, lost dispatch commands and lost leads are re-published, `sending` is only counted."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from proto.messages import EmailDeadLettered, EmailDispatch, EmailEvent, LeadAccepted
from services.common.config import JobSettings
from services.common.db import transaction
from services.jobs.retry_failed import retry_failed
from services.scheduler.enrollment import enroll_lead
from tests.support.jobs import Pool, insert_lead, job_context, job_settings, outbox_messages, queued_message
from tests.support.platform import apply_examples, fetch_all

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(migrated_database_url: str) -> JobSettings:
    await apply_examples(migrated_database_url)
    return job_settings(migrated_database_url, max_attempts=3)


@pytest.fixture
async def pool(settings: JobSettings) -> AsyncIterator[Pool]:
    async with job_context(settings) as ctx:
        yield ctx.pool


async def _run(settings: JobSettings) -> dict[str, int]:
    async with job_context(settings) as ctx:
        return await retry_failed(ctx)


async def _set(pool: Pool, message_id: uuid.UUID, assignments: str) -> None:
    async with transaction(pool) as conn:
        # Test-owned literals only: each caller passes a fixed SET clause.
        await conn.execute(f"UPDATE messages SET {assignments} WHERE id = %s".encode(), (message_id,))  # noqa: S608
        await conn.execute("DELETE FROM outbox")


async def _status(pool: Pool, message_id: uuid.UUID) -> dict[str, object]:
    [row] = await fetch_all(pool.conninfo, "SELECT status, attempts FROM messages WHERE id = %s", message_id)
    return row


async def test_due_retry_is_queued_again_with_a_dispatch_command(settings: JobSettings, pool: Pool) -> None:
    due, later = await queued_message(pool), await queued_message(pool)
    await _set(pool, due, "status = 'retrying', attempts = 1, next_attempt_at = now() - interval '1 second'")
    await _set(pool, later, "status = 'retrying', attempts = 1, next_attempt_at = now() + interval '1 hour'")

    counts = await _run(settings)

    assert (counts["requeued"], counts["dead"]) == (1, 0)
    assert await _status(pool, due) == {"status": "queued", "attempts": 1}
    assert await _status(pool, later) == {"status": "retrying", "attempts": 1}
    [command] = await outbox_messages(pool.conninfo, settings.topic_email_dispatch)
    assert isinstance(command, EmailDispatch)
    assert (command.message_id, command.attempt) == (due, 2)
    assert (await _run(settings))["requeued"] == 0  # queued now: not requeued twice


async def test_retry_past_the_attempt_cap_is_dead_and_dead_lettered(settings: JobSettings, pool: Pool) -> None:
    spent = await queued_message(pool)
    await _set(pool, spent, "status = 'retrying', attempts = 3, next_attempt_at = now(), last_error = '451 try later'")

    counts = await _run(settings)

    assert (counts["requeued"], counts["dead"]) == (0, 1)
    assert await _status(pool, spent) == {"status": "dead", "attempts": 3}
    assert await outbox_messages(pool.conninfo, settings.topic_email_dispatch) == []
    [letter] = await outbox_messages(pool.conninfo, settings.topic_email_dlq)
    assert isinstance(letter, EmailDeadLettered)
    assert (letter.message_id, letter.attempts) == (spent, 3)
    assert "451 try later" in letter.reason
    [event] = await outbox_messages(pool.conninfo, settings.topic_email_events)
    assert isinstance(event, EmailEvent)
    assert (event.event, event.step_position, event.revision) == ("dead", 0, 1)
    # Recorded like every other event: with its step, so the daily rollup counts it per step.
    events = await fetch_all(
        pool.conninfo,
        "SELECT type, sequence_id IS NOT NULL AS seq, revision, step_position FROM events WHERE message_id = %s",
        spent,
    )
    assert events == [{"type": "dead", "seq": True, "revision": 1, "step_position": 0}]


async def test_message_queued_too_long_is_republished_once_per_period(settings: JobSettings, pool: Pool) -> None:
    stuck, fresh = await queued_message(pool), await queued_message(pool)
    await _set(pool, stuck, "updated_at = now() - interval '1 hour'")

    first = await _run(settings)
    second = await _run(settings)

    assert (first["republished_messages"], second["republished_messages"]) == (1, 0)
    [command] = await outbox_messages(pool.conninfo, settings.topic_email_dispatch)
    assert isinstance(command, EmailDispatch)
    assert command.message_id == stuck != fresh
    assert await _status(pool, stuck) == {"status": "queued", "attempts": 0}


async def test_message_stuck_in_sending_is_counted_and_logged_never_resent(
    settings: JobSettings, pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = await queued_message(pool)
    await _set(pool, stuck, "status = 'sending', attempts = 1, sending_at = now() - interval '1 hour'")

    counts = await _run(settings)

    assert counts["stuck_sending"] == 1
    assert await _status(pool, stuck) == {"status": "sending", "attempts": 1}
    assert await fetch_all(pool.conninfo, "SELECT id FROM outbox") == []
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and "sending" in r.getMessage()]
    assert warning.stuck_sending == 1  # type: ignore[attr-defined]


async def test_with_resend_stuck_sending_a_message_stuck_in_sending_is_queued_again_once(
    settings: JobSettings, pool: Pool
) -> None:
    resend = msgspec.structs.replace(settings, resend_stuck_sending=True)
    stuck = await queued_message(pool)
    recent = await queued_message(pool)
    await _set(pool, stuck, "status = 'sending', attempts = 1, sending_at = now() - interval '1 hour'")
    await _set(pool, recent, "status = 'sending', attempts = 1, sending_at = now()")
    async with transaction(pool) as conn:
        await conn.execute("DELETE FROM outbox")

    first = await _run(resend)
    second = await _run(resend)

    assert (first["resent_sending"], second["resent_sending"]) == (1, 0)
    assert await _status(pool, stuck) == {"status": "queued", "attempts": 1}
    assert await _status(pool, recent) == {"status": "sending", "attempts": 1}  # may still be in flight
    [command] = await outbox_messages(pool.conninfo, settings.topic_email_dispatch)
    assert isinstance(command, EmailDispatch)
    assert (command.message_id, command.attempt) == (stuck, 2)


async def test_lead_never_handled_by_the_scheduler_is_republished(settings: JobSettings, pool: Pool) -> None:
    lost, handled, recent = await insert_lead(pool), await insert_lead(pool), await insert_lead(pool)
    nowhere = await insert_lead(pool, source="partner")  # matches no Sequence: handled all the same
    async with transaction(pool) as conn:
        await enroll_lead(conn, handled)
        await enroll_lead(conn, nowhere)
        await conn.execute(
            "UPDATE leads SET created_at = now() - interval '1 hour' WHERE id = ANY(%s)", ([lost, handled, nowhere],)
        )
        await conn.execute("DELETE FROM outbox")

    first = await _run(settings)
    second = await _run(settings)

    assert (first["republished_leads"], second["republished_leads"]) == (1, 0)
    [message] = await outbox_messages(pool.conninfo, settings.topic_leads_accepted)
    assert isinstance(message, LeadAccepted)
    assert (message.lead_id, message.source) == (lost, "website")
    assert recent not in (message.lead_id,)
    rows = await fetch_all(pool.conninfo, "SELECT id FROM leads WHERE enrolled_at IS NOT NULL ORDER BY id")
    assert {row["id"] for row in rows} == {handled, nowhere}
