"""Dispatching over real SMTP (aiosmtpd) and PostgreSQL: headers, header injection, transient failures
delivered exactly once, batches, the shared rate, release on cancellation."""

from __future__ import annotations

import asyncio
import json
import uuid
from argparse import Namespace
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from typing import Any

import msgspec
import psycopg_pool
import pytest

from devstack.mailsink import MailSink
from proto.codec import decode_message, encode_message
from proto.messages import EmailDispatch
from services.common import metrics
from services.common.config import DatabaseSettings, DeadLetterSettings, DispatcherSettings
from services.common.db import Connection, open_pool, transaction
from services.common.sequences import apply_sequence, parse_sequence_document
from services.common.templates import template_context
from services.common.tokens import Purpose, verify_token
from services.dispatcher.dead_letters_cli import run_dlq_command
from services.dispatcher.dispatch import Dispatcher
from services.dispatcher.rate import lease_send_tokens
from services.dispatcher.service import dispatch_handler
from services.dispatcher.smtp import SmtpPool, SmtpTarget
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead
from tests.support.platform import FROM_EMAIL, apply_examples, fetch_all, make_settings, smtp_url_of, wait_until

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]
MakeDispatcher = Callable[..., Dispatcher]


@pytest.fixture
async def pool(migrated_database_url: str) -> AsyncIterator[Pool]:
    await apply_examples(migrated_database_url)
    pool = await open_pool(DatabaseSettings(database_url=migrated_database_url))
    yield pool
    await pool.close()


@pytest.fixture
async def make_dispatcher(pool: Pool, mail_sink: MailSink, topic_prefix: str) -> AsyncIterator[MakeDispatcher]:
    smtp_pools: list[SmtpPool] = []

    def make(**overrides: Any) -> Dispatcher:
        settings = make_settings(
            DispatcherSettings,
            pool.conninfo,
            "127.0.0.1:9",  # not contacted: these tests drive the dispatcher directly
            topic_prefix,
            **{
                "smtp_url": smtp_url_of(mail_sink),
                "smtp_timeout_s": 5.0,
                "max_attempts": 3,
                "public_base_url": "https://go.example.com",
                **overrides,
            },
        )
        smtp = SmtpPool(
            SmtpTarget.from_url(settings.smtp_url),
            settings.smtp_timeout_s,
            size=settings.dispatch_concurrency,
            throttle_pause_s=0.01,
        )
        smtp_pools.append(smtp)
        return Dispatcher(settings, pool, smtp)

    yield make
    for smtp in smtp_pools:
        await smtp.close()


async def queue_message(
    pool: Pool, email: str = "grace@example.com", first_name: str = "Grace", source: str = "website"
) -> uuid.UUID:
    lead_id = uuid.uuid4()
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, first_name, last_name, source, consent_marketing)
               VALUES (%s, %s, %s, %s, 'Hopper', %s, true)""",
            (lead_id, email, email.lower(), first_name, source),
        )
        await enroll_lead(conn, lead_id)
        [step] = await emit_due_steps(conn, limit=10, topic="email.dispatch")
    return step.message_id


async def status_of(pool: Pool, message_id: uuid.UUID) -> dict[str, object]:
    [row] = await fetch_all(pool.conninfo, "SELECT status, attempts FROM messages WHERE id = %s", message_id)
    return row


async def make_due(pool: Pool) -> None:
    async with transaction(pool) as conn:
        await conn.execute("UPDATE messages SET next_attempt_at = now() WHERE status = 'retrying'")


def header_names(email: EmailMessage) -> list[str]:
    return [name.lower() for name in email]


async def test_headers_carry_one_click_unsubscribe_the_idempotency_key_and_tracking(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink
) -> None:
    dispatcher = make_dispatcher(smtp_idempotency_header="Resend-Idempotency-Key")
    message_id = await queue_message(pool)

    assert await dispatcher.dispatch(message_id) == "sent"

    [email] = mail_sink.messages()
    https_part, mailto_part = (part.strip().strip("<>") for part in email["List-Unsubscribe"].split(","))
    assert https_part.startswith("https://go.example.com/u/")
    secret = dispatcher._settings.hmac_secret
    assert verify_token(https_part.rsplit("/", 1)[1], Purpose.UNSUBSCRIBE, [secret]).message_id == message_id
    assert mailto_part.startswith(f"mailto:{FROM_EMAIL}?subject=unsubscribe%20")
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert email["Resend-Idempotency-Key"] == str(message_id)
    html_body = email.get_body(("html",))
    assert html_body is not None
    assert "https://go.example.com/t/o/" in html_body.get_content()
    text_body = email.get_body(("plain",))
    assert text_body is not None
    assert https_part in text_body.get_content()


async def test_no_idempotency_header_when_configured_off(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink
) -> None:
    dispatcher = make_dispatcher(smtp_idempotency_header="none")
    await dispatcher.dispatch(await queue_message(pool))

    [email] = mail_sink.messages()
    assert "x-idempotency-key" not in header_names(email)


async def test_a_sequence_from_overrides_the_configured_sender(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink
) -> None:
    resource = parse_sequence_document(
        {
            "apiVersion": "healingwork.io/v1alpha1",
            "kind": "Sequence",
            "metadata": {"name": "webinar"},
            "spec": {
                "trigger": {"sources": ["webinar"]},
                "from": {"email": "events@mail.example.com", "name": "Events Team"},
                "steps": [{"name": "hello", "subject": "See you", "text": "Hi {{ lead.first_name }}"}],
            },
        },
        "test",
    )
    async with transaction(pool) as conn:
        await apply_sequence(conn, resource)
    message_id = await queue_message(pool, "ada@example.com", "Ada", source="webinar")

    assert await make_dispatcher().dispatch(message_id) == "sent"

    [email] = mail_sink.messages()
    assert str(email["From"]) == "Events Team <events@mail.example.com>"
    assert mail_sink.envelopes[0][0] == "events@mail.example.com"
    assert email["Message-ID"] == f"<{message_id}@mail.example.com>"


@pytest.mark.parametrize(
    "first_name",
    ["Grace\r\nBcc: eve@example.com", "Grace\nBcc: eve@example.com", "Grace\u2028Bcc: eve@example.com"],
)
async def test_lead_data_cannot_inject_a_header_or_a_recipient(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink, first_name: str
) -> None:
    message_id = await queue_message(pool, first_name=first_name)

    assert await make_dispatcher().dispatch(message_id) == "sent"

    [email] = mail_sink.messages()
    assert "bcc" not in header_names(email)
    assert mail_sink.envelopes == [(FROM_EMAIL, ["grace@example.com"])]
    assert email["Subject"] == "Welcome to healingwork, Grace Bcc: eve@example.com"


async def test_a_transient_failure_is_retried_and_delivered_exactly_once(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink
) -> None:
    dispatcher = make_dispatcher()
    message_id = await queue_message(pool)
    mail_sink.fail_with = (451, "4.3.0 Try again later")

    assert await dispatcher.dispatch(message_id) == "retrying"
    mail_sink.fail_with = None
    await make_due(pool)
    assert await dispatcher.dispatch(message_id) == "sent"
    assert await dispatcher.dispatch(message_id) is None  # a redelivered command

    [email] = mail_sink.messages()
    assert email["Message-ID"] == f"<{message_id}@example.com>"
    assert await status_of(pool, message_id) == {"status": "sent", "attempts": 2}
    events = await fetch_all(pool.conninfo, "SELECT type FROM events WHERE message_id = %s ORDER BY id", message_id)
    assert [e["type"] for e in events] == ["failed", "sent"]


async def test_a_batch_is_sent_concurrently_over_reused_connections_each_message_once(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink
) -> None:
    dispatcher = make_dispatcher(dispatch_concurrency=4)
    ids = [await queue_message(pool, f"lead{i}@example.com") for i in range(20)]
    connects_before = metrics.SMTP_CONNECTS._value.get()

    outcome = await dispatcher.dispatch_batch(ids + ids[:5])  # a batch may repeat a command

    assert outcome == dict.fromkeys(ids, "sent")
    message_ids = sorted(str(e["Message-ID"]) for e in mail_sink.messages())
    assert message_ids == sorted(f"<{i}@example.com>" for i in ids)
    assert metrics.SMTP_CONNECTS._value.get() - connects_before <= 4


async def test_a_throttling_server_pauses_the_pool_and_the_messages_retry(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink
) -> None:
    dispatcher = make_dispatcher(dispatch_concurrency=2)
    ids = [await queue_message(pool, f"lead{i}@example.com") for i in range(3)]
    throttled_before = metrics.SMTP_THROTTLED._value.get()
    mail_sink.fail_with = (421, "4.7.0 Too many messages, slow down")

    outcome = await dispatcher.dispatch_batch(ids)

    assert set(outcome.values()) == {"retrying"}
    assert metrics.SMTP_THROTTLED._value.get() - throttled_before == 3
    mail_sink.fail_with = None
    await make_due(pool)
    assert set((await dispatcher.dispatch_batch(ids)).values()) == {"sent"}
    assert len(mail_sink.messages()) == 3


async def test_cancelling_a_batch_leaves_the_messages_not_yet_handed_to_smtp_sendable(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink
) -> None:
    # One message per second: the first goes out, the others wait for the shared rate.
    dispatcher = make_dispatcher(smtp_rate_per_s=1.0, smtp_rate_name=f"r{uuid.uuid4().hex}")
    ids = [await queue_message(pool, f"lead{i}@example.com") for i in range(3)]

    batch = asyncio.create_task(dispatcher.dispatch_batch(ids))

    async def one_sent() -> bool:
        rows = await fetch_all(pool.conninfo, "SELECT 1 FROM messages WHERE status = 'sent'")
        return len(rows) == 1

    await wait_until(one_sent, timeout=10, what="the first message recorded sent")
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch

    # Waiting for the rate, they were never claimed: no attempt counted, nothing in the duplicate window.
    statuses = [await status_of(pool, i) for i in ids]
    assert sorted(str(s["status"]) for s in statuses) == ["queued", "queued", "sent"]
    assert all(s["attempts"] == 0 for s in statuses if s["status"] == "queued")
    # The next delivery of their commands sends them.
    assert sorted((await make_dispatcher().dispatch_batch(ids)).values()) == ["sent", "sent"]
    assert len(mail_sink.messages()) == 3


async def test_the_shared_send_rate_grants_one_second_of_burst_across_replicas(pool: Pool) -> None:
    name = f"bucket-{uuid.uuid4().hex}"

    async def lease() -> int:
        async with transaction(pool) as conn:
            return await lease_send_tokens(conn, name, rate_per_s=2.0, wanted=1)

    # Five replicas at once: the bucket holds one second (two tokens), the next comes after 0.5 s.
    grants = await asyncio.gather(*(lease() for _ in range(5)))

    assert sorted(grants) == [0, 0, 0, 1, 1]
    assert await lease() == 0


# --- dead letters ----------------------------------------------------------------------------------


async def test_a_permanent_failure_is_dead_lettered_once_and_replayable(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink, topic_prefix: str
) -> None:
    dispatcher = make_dispatcher()
    message_id = await queue_message(pool, "nobody@example.com")
    mail_sink.reject_recipients = {"nobody@example.com": (550, "5.1.1 No such user")}

    assert await dispatcher.dispatch(message_id) == "dead"
    assert await dispatcher.dispatch(message_id) is None  # a redelivered command

    dlq_topic = f"{topic_prefix}email.dispatch.dlq"
    dead_letters = await fetch_all(pool.conninfo, "SELECT key FROM outbox WHERE topic = %s", dlq_topic)
    assert dead_letters == [{"key": str(message_id)}]
    settings = DeadLetterSettings(database_url=pool.conninfo, topic_email_dispatch=f"{topic_prefix}email.dispatch")
    listed = await run_dlq_command(settings, Namespace(sequence_command="list", limit=10, json=True))
    [letter] = [json.loads(line) for line in listed.splitlines()]
    assert (letter["message_id"], letter["attempts"]) == (str(message_id), 1)
    assert "550 5.1.1 No such user" in letter["reason"]

    mail_sink.reject_recipients = {}
    replayed = await run_dlq_command(settings, Namespace(sequence_command="replay", ids=[str(message_id)], all=False))

    assert replayed == "replayed 1 message(s)\n"
    assert await status_of(pool, message_id) == {"status": "queued", "attempts": 0}
    commands = await fetch_all(pool.conninfo, "SELECT key FROM outbox WHERE topic = %s", settings.topic_email_dispatch)
    assert len(commands) == 1
    assert await dispatcher.dispatch(message_id) == "sent"
    assert len(mail_sink.messages()) == 1
    assert await run_dlq_command(settings, Namespace(sequence_command="list", limit=10, json=False)) == (
        "no dead letters\n"
    )


async def apply_step(pool: Pool, source: str, **step: str) -> None:
    """Store a one-step Sequence for leads from ``source`` (through apply_sequence and its checks)."""
    resource = parse_sequence_document(
        {
            "apiVersion": "healingwork.io/v1alpha1",
            "kind": "Sequence",
            "metadata": {"name": source},
            "spec": {"trigger": {"sources": [source]}, "steps": [{"name": "only", "subject": "Hi", **step}]},
        },
        "test",
    )
    async with transaction(pool) as conn:
        await apply_sequence(conn, resource)


# Each passes the check at apply time (the sample lead's address has 15 characters) and fails for a lead
# whose address has 17, as a template may fail only for some leads' data.
FAILING_FOR_LONGER_ADDRESSES = {
    "division": ("{{ 10 // (lead.email | length - 17) }}", "ZeroDivisionError: integer division or modulo by zero"),
    "huge-string": (
        '{{ "a" * ((lead.email | length - 15) * 25000000) }}',
        "a repetition would be 50,000,000 long, over the limit of 1,048,576",
    ),
    "huge-range": (
        "{% for i in range((lead.email | length - 15) * 10 ** 9) %}{% endfor %}",
        "a range is over the limit of 100,000 items",
    ),
    "filter": ("{{ [1, lead.email[15:]] | sort if lead.email[15:] else '' }}", "TypeError"),
}


@pytest.mark.parametrize("case", FAILING_FOR_LONGER_ADDRESSES)
async def test_a_template_failing_at_send_time_is_dead_lettered_with_the_reason(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink, topic_prefix: str, case: str
) -> None:
    template, reason = FAILING_FOR_LONGER_ADDRESSES[case]
    await apply_step(pool, case, text=template)
    message_id = await queue_message(pool, "grace@example.com", source=case)

    assert await make_dispatcher().dispatch(message_id) == "dead"

    assert mail_sink.messages() == []
    assert await status_of(pool, message_id) == {"status": "dead", "attempts": 1}
    [row] = await fetch_all(pool.conninfo, "SELECT last_error FROM messages WHERE id = %s", message_id)
    assert str(row["last_error"]).startswith("template error: ")
    assert reason in str(row["last_error"])
    dlq_topic = f"{topic_prefix}email.dispatch.dlq"
    [letter] = await fetch_all(pool.conninfo, "SELECT key, payload FROM outbox WHERE topic = %s", dlq_topic)
    assert letter["key"] == str(message_id)
    assert reason in json.loads(bytes(letter["payload"]))["reason"]  # type: ignore[arg-type]


def context_paths(context: object, path: str = "") -> frozenset[str]:
    """The variable names a context offers, nested ones dotted: {"lead.email", ..., "unsubscribe_url"}."""
    if not isinstance(context, dict):
        return frozenset({path})
    return frozenset().union(*(context_paths(value, f"{path}.{key}".lstrip(".")) for key, value in context.items()))


async def test_apply_time_checks_offer_exactly_the_variables_the_dispatcher_renders_with(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[dict[str, Any]] = []

    def recording(*args: Any) -> dict[str, Any]:
        built.append(template_context(*args))
        return built[-1]

    monkeypatch.setattr("services.common.compose.template_context", recording)
    await apply_step(pool, "everything", html='<p>{{ lead.first_name }} <a href="{{ unsubscribe_url }}">bye</a></p>')
    at_apply = [context_paths(context) for context in built]
    built.clear()
    message_id = await queue_message(pool, source="everything")

    assert await make_dispatcher().dispatch(message_id) == "sent"

    [at_send] = [context_paths(context) for context in built]
    assert at_apply == [at_send, at_send]  # one sample lead with every optional field, one without
    assert "unsubscribe_url" in at_send
    [email] = mail_sink.messages()
    html_body = email.get_body(("html",))
    assert html_body is not None
    assert "bye</a>" in html_body.get_content()


async def test_replaying_a_message_that_is_not_dead_changes_nothing(pool: Pool, topic_prefix: str) -> None:
    message_id = await queue_message(pool)
    settings = DeadLetterSettings(database_url=pool.conninfo)

    with pytest.raises(ValueError, match=f"not dead letters.*{message_id}"):
        await run_dlq_command(settings, Namespace(sequence_command="replay", ids=[str(message_id)], all=False))
    with pytest.raises(ValueError, match="not a message id"):
        await run_dlq_command(settings, Namespace(sequence_command="replay", ids=["nope"], all=False))

    assert await status_of(pool, message_id) == {"status": "queued", "attempts": 0}


async def test_replay_all_requeues_every_dead_message(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink
) -> None:
    dispatcher = make_dispatcher()
    ids = [await queue_message(pool, f"lead{i}@example.com") for i in range(3)]
    mail_sink.fail_with = (554, "5.7.1 Rejected")
    await dispatcher.dispatch_batch(ids)
    settings = DeadLetterSettings(database_url=pool.conninfo)

    replayed = await run_dlq_command(settings, Namespace(sequence_command="replay", ids=None, all=True))

    assert replayed == "replayed 3 message(s)\n"
    assert [await status_of(pool, i) for i in ids] == [{"status": "queued", "attempts": 0}] * 3


async def test_a_command_in_the_id_scheme_before_the_upgrade_sends_nothing_twice(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink
) -> None:
    dispatcher = make_dispatcher()
    message_id = await queue_message(pool)
    [row] = await fetch_all(pool.conninfo, "SELECT payload FROM outbox WHERE topic = 'email.dispatch'")
    current = decode_message(bytes(row["payload"]))  # type: ignore[arg-type]
    assert isinstance(current, EmailDispatch)
    # Written before the upgrade: the command's id was the message id itself.
    before_upgrade = msgspec.structs.replace(current, id=message_id)
    assert current.id != before_upgrade.id

    # Both commands go through the consumer's own handler, as records decoded from the topic would.
    handle = dispatch_handler(dispatcher)
    await handle([decode_message(encode_message(current))])
    await handle([decode_message(encode_message(before_upgrade))])

    assert await status_of(pool, message_id) == {"status": "sent", "attempts": 1}
    assert len(mail_sink.messages()) == 1


async def test_two_batches_in_flight_never_have_more_messages_sending_than_connections(
    make_dispatcher: MakeDispatcher, pool: Pool, mail_sink: MailSink
) -> None:
    dispatcher = make_dispatcher(dispatch_concurrency=3)
    ids = [await queue_message(pool, f"lead{i}@example.com") for i in range(30)]
    seen: list[int] = []

    async def watch_the_window() -> None:
        async with pool.connection() as conn:
            while True:
                cursor = await conn.execute("SELECT count(*) AS n FROM messages WHERE status = 'sending'")
                row = await cursor.fetchone()
                seen.append(int(row["n"]) if row else 0)  # type: ignore[call-overload]
                await asyncio.sleep(0)

    watcher = asyncio.create_task(watch_the_window())
    try:
        first, second = await asyncio.gather(dispatcher.dispatch_batch(ids[:15]), dispatcher.dispatch_batch(ids[15:]))
    finally:
        watcher.cancel()

    assert {**first, **second} == dict.fromkeys(ids, "sent")
    assert len(mail_sink.messages()) == 30
    assert seen  # the window was looked at while the batches ran
    assert max(seen) <= 3
