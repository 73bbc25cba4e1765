"""Complete erasure (issue 15, item 5), attacked on real PostgreSQL, a real broker and real SMTP: after
DELETE /v1/leads, no table, no outbox row and no hash in the database confirms the person."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg_pool
import pytest

from devstack.mailsink import MailSink
from services.common.config import DatabaseSettings, DispatcherSettings
from services.common.db import Connection, open_pool, transaction
from services.common.identity import email_hash, legacy_email_hash
from services.common.tokens import Purpose, sign_token
from services.dispatcher.dispatch import Dispatcher
from services.dispatcher.smtp import SmtpPool, SmtpTarget
from services.intake.erasure import PERSONAL_DATA
from services.intake.hash_upgrade import rehash_all
from services.intake.provider_events import ProviderEvent, apply_provider_events
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead
from tests.support.intake import Intake, running_intake
from tests.support.platform import apply_examples, fetch_all, make_settings, smtp_url_of

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]

ADDRESS = "Zebulon.Quixote@Example.org"
KEY = ADDRESS.lower()
LOCAL_PART = "zebulon.quixote"
FIRST, LAST = "Zebulon", "Quixote"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
# Columns that tie a row to a person; a table having one must be listed in erasure.PERSONAL_DATA.
PERSONAL_COLUMNS = {"email", "email_normalized", "email_hash", "lead_id", "payload"}
# Tables with such a column that hold nothing personal by design.
NOT_PERSONAL: set[str] = set()


@dataclass
class Platform:
    intake: Intake
    dispatcher: Dispatcher
    pool: Pool
    sink: MailSink


@pytest.fixture
async def platform(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str, mail_sink: MailSink
) -> AsyncIterator[Platform]:
    await apply_examples(migrated_database_url)
    settings = make_settings(
        DispatcherSettings,
        migrated_database_url,
        kafka_bootstrap_servers,
        topic_prefix,
        smtp_url=smtp_url_of(mail_sink),
        smtp_timeout_s=5.0,
        max_attempts=3,
    )
    pool = await open_pool(settings)
    smtp = SmtpPool(SmtpTarget.from_url(settings.smtp_url), settings.smtp_timeout_s, size=1, throttle_pause_s=0.01)
    try:
        async with running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix) as intake:
            yield Platform(intake, Dispatcher(settings, pool, smtp), pool, mail_sink)
    finally:
        await smtp.close()
        await pool.close()


async def submit(platform: Platform, email: str, first: str, last: str) -> uuid.UUID:
    response = await platform.intake.http.post(
        "/v1/leads",
        json={
            "email": email,
            "first_name": first,
            "last_name": last,
            "source": "website",
            "consent": {"marketing": True},
        },
    )
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


async def first_step(pool: Pool, lead_id: uuid.UUID) -> uuid.UUID:
    async with transaction(pool) as conn:
        await enroll_lead(conn, lead_id)
        [step] = await emit_due_steps(conn, limit=10, topic="email.dispatch")
    return step.message_id


async def database_dump(database_url: str) -> str:
    """Every row of every table as text (bytea payloads decoded), lower-cased: what a dump would show."""
    tables = await fetch_all(
        database_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    parts = []
    for row in tables:
        table = str(row["table_name"])
        rows = await fetch_all(database_url, f'SELECT t::text AS r FROM "{table}" t')  # noqa: S608 - catalog names
        parts.extend(str(r["r"]) for r in rows)
    outbox = await fetch_all(database_url, "SELECT convert_from(payload, 'UTF8') AS p FROM outbox")
    parts.extend(str(r["p"]) for r in outbox)
    return "\n".join(parts).lower()


async def test_every_table_with_a_personal_column_is_covered_by_erasure(migrated_database_url: str) -> None:
    rows = await fetch_all(
        migrated_database_url,
        """SELECT DISTINCT c.table_name FROM information_schema.columns c
           JOIN information_schema.tables t ON t.table_name = c.table_name AND t.table_schema = c.table_schema
           WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' AND c.column_name = ANY(%s)""",
        sorted(PERSONAL_COLUMNS),
    )
    personal = {str(r["table_name"]) for r in rows} - NOT_PERSONAL
    covered = {holder.table for holder in PERSONAL_DATA}

    assert personal - covered == set(), "add these tables to services.intake.erasure.PERSONAL_DATA"


async def test_tables_erased_by_cascade_really_cascade_from_leads(migrated_database_url: str) -> None:
    """Directly (a key to ``leads``) or through tables that do (``messages`` goes with its enrollment)."""
    rows = await fetch_all(
        migrated_database_url,
        """SELECT src.relname AS table_name, dst.relname AS referenced FROM pg_constraint c
           JOIN pg_class src ON src.oid = c.conrelid JOIN pg_class dst ON dst.oid = c.confrelid
           WHERE c.contype = 'f' AND c.confdeltype = 'c'""",
    )
    cascading = {"leads"}
    while True:
        reached = {str(r["table_name"]) for r in rows if r["referenced"] in cascading} | cascading
        if reached == cascading:
            break
        cascading = reached

    by_cascade = {holder.table for holder in PERSONAL_DATA if holder.erase is None}
    assert by_cascade - cascading == set()


async def test_erasure_leaves_no_address_name_or_unkeyed_hash_anywhere(platform: Platform) -> None:
    intake = platform.intake
    lead_id = await submit(platform, ADDRESS, FIRST, LAST)
    bystander = await submit(platform, "ruth@example.net", "Ruth", "Ellis")
    message_id = await first_step(platform.pool, lead_id)
    bystander_message = await first_step(platform.pool, bystander)
    # The server refuses the recipient quoting it, as real servers do.
    platform.sink.reject_recipients = {KEY: (550, f"5.1.1 <{ADDRESS}>: Recipient address rejected ({LOCAL_PART})")}
    assert await platform.dispatcher.dispatch(message_id) == "dead"
    assert await platform.dispatcher.dispatch(bystander_message) == "sent"
    # A personalised link clicked, and a provider bounce whose diagnostic quotes the address.
    personal_url = f"https://shop.example.com/offer?email={ADDRESS}&name={FIRST}#{LAST}"
    token = sign_token(intake.settings.hmac_secret, Purpose.CLICK, message_id, personal_url)
    click = await intake.anonymous().get(f"/t/c/{token}", headers={"User-Agent": BROWSER})
    assert (click.status_code, click.headers["location"]) == (302, personal_url)
    await apply_provider_events(
        platform.pool,
        [ProviderEvent("ev-1", "bounced", ADDRESS, True, f"smtp; 550 5.1.1 <{ADDRESS}>... user unknown", message_id)],
        adapter="generic",
        events_topic=intake.settings.topic_email_events,
        suppressed_topic=intake.settings.topic_leads_suppressed,
        hash_key=intake.settings.suppression_hash_key,
    )
    url = intake.settings.database_url
    # Redacted when written, before any erasure.
    [message] = await fetch_all(url, "SELECT last_error FROM messages WHERE id = %s", message_id)
    assert "550 5.1.1 <redacted>: Recipient address rejected (redacted)" in str(message["last_error"])
    clicks = await fetch_all(url, "SELECT detail FROM events WHERE type = 'clicked'")
    assert clicks == [{"detail": "https://shop.example.com/offer"}]
    [suppression] = await fetch_all(url, "SELECT detail FROM suppressions")
    assert suppression == {"detail": "generic: smtp; 550 5.1.1 <redacted>... user unknown"}
    assert LOCAL_PART in await database_dump(url)  # the lead itself, until erased

    erased = await intake.http.delete("/v1/leads", params={"email": ADDRESS})

    assert erased.status_code == 204
    dump = await database_dump(url)
    for trace in (KEY, LOCAL_PART, FIRST.lower(), LAST.lower(), legacy_email_hash(KEY), str(message_id)):
        assert trace not in dump, trace
    # The lead id stays in one place only: the lead.erased announcement (ids only), for webhooks.
    [announcement] = await fetch_all(
        url, "SELECT id, convert_from(payload, 'UTF8') AS m FROM outbox WHERE key = %s", str(lead_id)
    )
    message = json.loads(str(announcement["m"]))
    assert (message["type"], message["lead_id"]) == ("lead.erased", str(lead_id))
    assert set(message) == {"type", "id", "occurred_at", "schema_version", "lead_id"}
    without_announcement = await fetch_all(
        url,
        "SELECT count(*) AS n FROM outbox WHERE id <> %s AND strpos(encode(payload, 'escape'), %s) > 0",
        announcement["id"],
        str(lead_id),
    )
    assert without_announcement == [{"n": 0}]
    assert dump.count(str(lead_id)) == 2, "the announcement's key and payload, nothing else"
    assert hashlib.sha256(ADDRESS.encode()).hexdigest() not in dump
    suppressions = await fetch_all(url, "SELECT email_hash, reason, detail, keyed FROM suppressions")
    assert suppressions == [
        {
            "email_hash": email_hash(KEY, intake.settings.suppression_hash_key),
            "reason": "erased",
            "detail": "",
            "keyed": True,
        }
    ]
    # The bystander is untouched.
    assert "ruth@example.net" in dump
    assert await fetch_all(url, "SELECT status FROM messages WHERE id = %s", bystander_message) == [{"status": "sent"}]


async def test_an_old_unkeyed_suppression_still_blocks_and_erasure_replaces_it(platform: Platform) -> None:
    url = platform.intake.settings.database_url
    pool = platform.pool
    async with transaction(pool) as conn:  # written by a release before keyed hashes
        await conn.execute(
            "INSERT INTO suppressions (email_hash, reason) VALUES (%s, 'unsubscribed')", (legacy_email_hash(KEY),)
        )
    lead_id = await submit(platform, ADDRESS, FIRST, LAST)

    async with transaction(pool) as conn:
        enrolled = await enroll_lead(conn, lead_id)
    assert enrolled == []

    await platform.intake.http.delete(f"/v1/leads/{lead_id}")

    dump = await database_dump(url)
    assert legacy_email_hash(KEY) not in dump
    rows = await fetch_all(url, "SELECT email_hash, reason FROM suppressions")
    assert rows == [{"email_hash": email_hash(KEY, platform.intake.settings.suppression_hash_key), "reason": "erased"}]


async def test_rehash_keys_old_leads_and_moves_their_unkeyed_suppressions(migrated_database_url: str) -> None:
    await apply_examples(migrated_database_url)
    hash_key = "8d3f1a6c9e2b5d8f1a4c7e0b3d6f9a2c5e8b1d4f"
    pool = await open_pool(DatabaseSettings(database_url=migrated_database_url))
    try:
        lead_id = uuid.uuid4()
        async with transaction(pool) as conn:  # as a previous release wrote them
            await conn.execute(
                """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
                   VALUES (%s, %s, %s, 'website', true)""",
                (lead_id, ADDRESS, KEY),
            )
            await conn.execute(
                "INSERT INTO suppressions (email_hash, reason, detail) VALUES (%s, 'bounced', 'ses: 550')",
                (legacy_email_hash(KEY),),
            )
            await conn.execute(  # the address left one Sequence (the preference page, before this release)
                "INSERT INTO sequence_unsubscribes (email_hash, sequence_id) SELECT %s, id FROM sequences LIMIT 1",
                (legacy_email_hash(KEY),),
            )
            await conn.execute(  # an address with no lead left: cannot be rehashed, stays as it is
                "INSERT INTO suppressions (email_hash, reason) VALUES (%s, 'erased')",
                (legacy_email_hash("gone@example.com"),),
            )

        rehashed = await rehash_all(pool, hash_key, limit=1)
        again = await rehash_all(pool, hash_key)
    finally:
        await pool.close()

    assert (rehashed, again) == (1, 0)
    leads = await fetch_all(migrated_database_url, "SELECT email_hash, email_hash_keyed FROM leads")
    assert leads == [{"email_hash": email_hash(KEY, hash_key), "email_hash_keyed": True}]
    suppressions = await fetch_all(
        migrated_database_url, "SELECT email_hash, reason, detail, keyed FROM suppressions ORDER BY keyed"
    )
    assert suppressions == [
        {"email_hash": legacy_email_hash("gone@example.com"), "reason": "erased", "detail": "", "keyed": False},
        {"email_hash": email_hash(KEY, hash_key), "reason": "bounced", "detail": "ses: 550", "keyed": True},
    ]
    left = await fetch_all(migrated_database_url, "SELECT email_hash FROM sequence_unsubscribes")
    assert left == [{"email_hash": email_hash(KEY, hash_key)}]


async def test_unpublished_outbox_rows_of_the_lead_are_deleted_by_erasure(platform: Platform) -> None:
    url = platform.intake.settings.database_url
    lead_id = await submit(platform, ADDRESS, FIRST, LAST)
    async with transaction(platform.pool) as conn:  # a row of another helper's topic carrying the address
        await conn.execute(
            "INSERT INTO outbox (topic, key, payload) VALUES ('webhooks', 'x', convert_to(%s, 'UTF8'))",
            (f'{{"email": "{ADDRESS}"}}',),
        )

    await platform.intake.http.delete(f"/v1/leads/{lead_id}")

    rows = await fetch_all(
        url,
        "SELECT key, convert_from(payload, 'UTF8')::jsonb ->> 'type' AS type FROM outbox WHERE key IN (%s, 'x')",
        str(lead_id),
    )
    assert rows == [{"key": str(lead_id), "type": "lead.erased"}]  # only the announcement, written after
