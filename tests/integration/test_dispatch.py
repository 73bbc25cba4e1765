"""Sending one message over real SMTP (aiosmtpd) and recording the outcome in PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg_pool
import pytest

from devstack.mailsink import MailSink
from services.common.config import DispatcherSettings
from services.common.db import Connection, open_pool, transaction
from services.common.identity import legacy_email_hash
from services.common.sequences import apply_sequence, parse_sequence_document
from services.dispatcher.dispatch import Dispatcher
from services.dispatcher.smtp import SmtpPool, SmtpTarget
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead
from tests.support.platform import FROM_EMAIL, apply_examples, fetch_all, make_settings, smtp_url_of

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]


@pytest.fixture
async def setup(
    migrated_database_url: str, mail_sink: MailSink, topic_prefix: str
) -> AsyncIterator[tuple[Dispatcher, Pool, DispatcherSettings]]:
    await apply_examples(migrated_database_url)
    settings = make_settings(
        DispatcherSettings,
        migrated_database_url,
        "127.0.0.1:9",  # not contacted: these tests drive the dispatcher directly
        topic_prefix,
        smtp_url=smtp_url_of(mail_sink),
        smtp_timeout_s=5.0,
        max_attempts=3,
        retry_base_delay_s=30.0,
    )
    pool = await open_pool(settings)
    smtp = SmtpPool(SmtpTarget.from_url(settings.smtp_url), settings.smtp_timeout_s, size=2, throttle_pause_s=0.01)
    yield Dispatcher(settings, pool, smtp), pool, settings
    await smtp.close()
    await pool.close()


async def _queued_message(pool: Pool, email: str = "grace@example.com") -> uuid.UUID:
    lead_id = uuid.uuid4()
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, first_name, last_name, source, consent_marketing)
               VALUES (%s, %s, %s, 'Grace', 'Hopper', 'website', true)""",
            (lead_id, email, email.lower()),
        )
        await enroll_lead(conn, lead_id)
        [step] = await emit_due_steps(conn, limit=10, topic="email.dispatch")
    return step.message_id


async def _message_row(pool: Pool, message_id: uuid.UUID) -> dict[str, object]:
    [row] = await fetch_all(
        pool.conninfo,
        "SELECT status, attempts, next_attempt_at IS NOT NULL AS scheduled, last_error FROM messages WHERE id = %s",
        message_id,
    )
    return row


async def test_message_is_sent_with_headers_and_recorded_sent(
    setup: tuple[Dispatcher, Pool, DispatcherSettings], mail_sink: MailSink
) -> None:
    dispatcher, pool, settings = setup
    message_id = await _queued_message(pool)

    assert await dispatcher.dispatch(message_id) == "sent"

    [email] = mail_sink.messages()
    assert email["To"] == "Grace Hopper <grace@example.com>"
    assert email["From"].addresses[0].display_name == settings.from_name
    assert email["From"].addresses[0].addr_spec == FROM_EMAIL
    assert email["Subject"] == "Welcome to healingwork, Grace"
    assert email["Message-ID"] == f"<{message_id}@example.com>"
    assert email.get_body(("plain",)) is not None
    assert (await _message_row(pool, message_id))["status"] == "sent"
    events = await fetch_all(
        pool.conninfo,
        "SELECT type, lead_id IS NOT NULL AS lead, sequence_id IS NOT NULL AS seq, revision, step_position"
        " FROM events WHERE message_id = %s",
        message_id,
    )
    assert events == [{"type": "sent", "lead": True, "seq": True, "revision": 1, "step_position": 0}]


async def test_a_sequence_with_its_own_sender_sends_from_it(
    setup: tuple[Dispatcher, Pool, DispatcherSettings], mail_sink: MailSink
) -> None:
    dispatcher, pool, _ = setup
    document = {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": "events"},
        "spec": {
            "trigger": {"sources": ["meetup"]},
            "from": {"email": "events@example.org", "name": "The Events Team"},
            "steps": [{"name": "hi", "subject": "See you there", "text": "Hi"}],
        },
    }
    lead_id = uuid.uuid4()
    async with transaction(pool) as conn:
        await apply_sequence(conn, parse_sequence_document(document, "events"))
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
               VALUES (%s, 'ada@example.com', 'ada@example.com', 'meetup', true)""",
            (lead_id,),
        )
        await enroll_lead(conn, lead_id)
        [step] = await emit_due_steps(conn, limit=10, topic="email.dispatch")

    assert await dispatcher.dispatch(step.message_id) == "sent"

    [email] = mail_sink.messages()
    assert email["From"] == "The Events Team <events@example.org>"
    assert email["Message-ID"] == f"<{step.message_id}@example.org>"


async def test_redelivered_command_for_a_sent_message_sends_nothing(
    setup: tuple[Dispatcher, Pool, DispatcherSettings], mail_sink: MailSink
) -> None:
    dispatcher, pool, _ = setup
    message_id = await _queued_message(pool)
    await dispatcher.dispatch(message_id)

    assert await dispatcher.dispatch(message_id) is None

    assert len(mail_sink.messages()) == 1
    assert (await _message_row(pool, message_id))["attempts"] == 1


async def test_temporary_smtp_failure_schedules_a_retry(
    setup: tuple[Dispatcher, Pool, DispatcherSettings], mail_sink: MailSink
) -> None:
    dispatcher, pool, _ = setup
    message_id = await _queued_message(pool)
    mail_sink.fail_with = (451, "4.3.0 Try again later")

    assert await dispatcher.dispatch(message_id) == "retrying"
    # Not due yet: a redelivered command must not bypass the backoff.
    assert await dispatcher.dispatch(message_id) is None

    row = await _message_row(pool, message_id)
    assert (row["status"], row["attempts"], row["scheduled"]) == ("retrying", 1, True)
    assert "451" in str(row["last_error"])
    assert mail_sink.messages() == []


async def test_permanent_rejection_marks_dead_and_dead_letters(
    setup: tuple[Dispatcher, Pool, DispatcherSettings], mail_sink: MailSink
) -> None:
    dispatcher, pool, settings = setup
    message_id = await _queued_message(pool, "nobody@example.com")
    mail_sink.reject_recipients = {"nobody@example.com": (550, "5.1.1 No such user")}

    assert await dispatcher.dispatch(message_id) == "dead"

    assert (await _message_row(pool, message_id))["status"] == "dead"
    dlq = await fetch_all(pool.conninfo, "SELECT key FROM outbox WHERE topic = %s", settings.topic_email_dlq)
    assert dlq == [{"key": str(message_id)}]


async def test_last_attempt_of_a_temporary_failure_marks_dead(
    setup: tuple[Dispatcher, Pool, DispatcherSettings], mail_sink: MailSink
) -> None:
    dispatcher, pool, settings = setup
    message_id = await _queued_message(pool)
    mail_sink.fail_with = (421, "4.7.0 Too busy")
    outcomes = []
    for _ in range(settings.max_attempts):
        outcomes.append(await dispatcher.dispatch(message_id))
        async with transaction(pool) as conn:  # the retry comes due
            await conn.execute("UPDATE messages SET next_attempt_at = now() WHERE next_attempt_at IS NOT NULL")

    assert outcomes == ["retrying", "retrying", "dead"]
    assert (await _message_row(pool, message_id))["attempts"] == settings.max_attempts


async def test_unreachable_smtp_server_is_a_temporary_failure(
    setup: tuple[Dispatcher, Pool, DispatcherSettings], mail_sink: MailSink
) -> None:
    dispatcher, pool, _ = setup
    message_id = await _queued_message(pool)
    mail_sink.stop()

    assert await dispatcher.dispatch(message_id) == "retrying"


async def test_suppressed_recipient_is_skipped_and_recorded(
    setup: tuple[Dispatcher, Pool, DispatcherSettings], mail_sink: MailSink
) -> None:
    dispatcher, pool, _ = setup
    message_id = await _queued_message(pool, "gone@example.com")
    async with transaction(pool) as conn:
        await conn.execute(
            "INSERT INTO suppressions (email_hash, reason) VALUES (%s, 'unsubscribed')",
            (legacy_email_hash("gone@example.com"),),
        )

    assert await dispatcher.dispatch(message_id) == "skipped"

    assert mail_sink.messages() == []
    assert (await _message_row(pool, message_id))["status"] == "skipped"


async def test_a_queued_step_of_a_sequence_the_address_left_is_skipped(
    setup: tuple[Dispatcher, Pool, DispatcherSettings], mail_sink: MailSink
) -> None:
    dispatcher, pool, _ = setup
    message_id = await _queued_message(pool, "leaver@example.com")
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO sequence_unsubscribes (email_hash, sequence_id)
               SELECT %s, sequence_id FROM messages WHERE id = %s""",
            (legacy_email_hash("leaver@example.com"), message_id),
        )

    assert await dispatcher.dispatch(message_id) == "skipped"

    assert mail_sink.messages() == []
    assert (await _message_row(pool, message_id))["status"] == "skipped"


async def test_a_sent_message_names_its_sequence_as_a_list(
    setup: tuple[Dispatcher, Pool, DispatcherSettings], mail_sink: MailSink
) -> None:
    dispatcher, pool, _ = setup
    message_id = await _queued_message(pool)

    assert await dispatcher.dispatch(message_id) == "sent"

    [email] = mail_sink.messages()
    assert email["List-Id"] == "<welcome.default.example.com>"
    assert email["Feedback-ID"] == "hello:welcome:default:healingwork"
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
