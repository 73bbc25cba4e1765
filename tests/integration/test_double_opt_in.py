"""Double opt-in at intake, the scheduler, the dispatcher and purge, over real HTTP, PostgreSQL and SMTP
(issue 15): who must confirm, the confirmation email's path, the link's pages, the cool-down, expiry;
and public forms answered without ids."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devstack.mailsink import MailSink
from services.common.config import ConfigError, DatabaseSettings, DispatcherSettings
from services.common.confirmation_email import ConfirmationTemplate
from services.common.db import connect, open_pool, transaction
from services.common.sequences import apply_sequence, parse_sequence_document
from services.common.tokens import Purpose, sign_token
from services.dispatcher.confirmations import ConfirmationSender
from services.dispatcher.rate import SharedRateLimiter
from services.dispatcher.smtp import SmtpPool, SmtpTarget
from services.jobs.purge import purge
from services.scheduler.enrollment import enroll_lead
from tests.support.intake import Intake, running_intake
from tests.support.jobs import job_context, job_settings
from tests.support.platform import apply_examples, fetch_all, make_settings, smtp_url_of

pytestmark = pytest.mark.integration

ORIGIN = "https://www.example.com"


async def execute(database_url: str, statement: str) -> None:
    """Run one statement that returns no rows (moving a lead back in time, suppressing it)."""
    conn = await connect(DatabaseSettings(database_url=database_url))
    async with conn:
        await conn.execute(statement.encode())
        await conn.commit()


def lead(email: str, source: str = "website") -> dict[str, object]:
    return {"email": email, "first_name": "Ada", "source": source, "consent": {"marketing": True}}


@pytest.fixture
async def intake(migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[Intake]:
    async with running_intake(
        migrated_database_url, kafka_bootstrap_servers, topic_prefix, public_form_origins=ORIGIN
    ) as running:
        yield running


async def outbox_types(intake: Intake) -> list[str]:
    rows = await fetch_all(
        intake.settings.database_url, "SELECT convert_from(payload, 'UTF8')::jsonb ->> 'type' AS type FROM outbox"
    )
    return sorted(str(row["type"]) for row in rows)


async def lead_id_of(intake: Intake, email: str) -> uuid.UUID:
    [row] = await fetch_all(intake.settings.database_url, "SELECT id FROM leads WHERE email_normalized = %s", email)
    return row["id"]  # type: ignore[return-value]


def confirm_path(intake: Intake, lead_id: uuid.UUID, purpose: Purpose = Purpose.CONFIRM) -> str:
    return f"/confirm/{sign_token(intake.settings.hmac_secret, purpose, lead_id)}"


# --- who must confirm ----------------------------------------------------------------------------


async def test_a_public_form_lead_is_held_and_gets_one_confirmation_email_queued(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": ORIGIN}) as form:
        response = await form.post("/v1/leads", json=lead("ada@example.com"))

    assert (response.status_code, response.json()) == (202, {"status": "received"})
    assert await outbox_types(intake) == ["lead.confirmation_requested"]  # no lead.accepted
    rows = await fetch_all(
        intake.settings.database_url,
        "SELECT confirmation_required, confirmation_sent_at IS NOT NULL AS asked, confirmed_at FROM leads",
    )
    assert rows == [{"confirmation_required": True, "asked": True, "confirmed_at": None}]


async def test_an_api_client_lead_enrolls_at_once_under_public_forms(intake: Intake) -> None:
    response = await intake.http.post("/v1/leads", json=lead("ada@example.com"))

    assert response.status_code == 202
    assert await outbox_types(intake) == ["lead.accepted"]


async def test_all_asks_api_client_leads_to_confirm_too(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix, double_opt_in="all") as it:
        response = await it.http.post("/v1/leads", json=lead("ada@example.com"))
        types = await outbox_types(it)

    assert response.json()["duplicate"] is False  # an API client still gets its lead's id
    assert types == ["lead.confirmation_requested"]


async def test_off_enrolls_public_form_leads_at_once(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with (
        running_intake(
            migrated_database_url,
            kafka_bootstrap_servers,
            topic_prefix,
            public_form_origins=ORIGIN,
            double_opt_in="off",
        ) as it,
        it.anonymous(headers={"Origin": ORIGIN}) as form,
    ):
        await form.post("/v1/leads", json=lead("ada@example.com"))
        types = await outbox_types(it)

    assert types == ["lead.accepted"]


# --- public forms learn nothing about existing leads ---------------------------------------------


async def test_a_public_form_duplicate_answers_exactly_like_a_new_lead(intake: Intake) -> None:
    existing = await intake.http.post("/v1/leads", json=lead("known@example.com"))
    async with intake.anonymous(headers={"Origin": ORIGIN}) as form:
        duplicate = await form.post("/v1/leads", json=lead("Known@example.com"))
        new = await form.post("/v1/leads", json=lead("unknown@example.com"))
        bot = await form.post("/v1/leads", json={**lead("bot@example.com"), "website_url": "http://spam.example"})

    answers = [(r.status_code, r.content) for r in (duplicate, new, bot)]
    assert answers == [(202, b'{"status":"received"}')] * 3
    assert existing.json()["id"] not in duplicate.text


# --- the cool-down -------------------------------------------------------------------------------


async def test_resubmission_within_the_cool_down_queues_no_second_email(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": ORIGIN}) as form:
        for _ in range(3):
            await form.post("/v1/leads", json=lead("ada@example.com"))

    assert await fetch_all(intake.settings.database_url, "SELECT count(*) AS n FROM confirmation_emails") == [{"n": 1}]


async def test_resubmission_after_the_cool_down_queues_another_email(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with (
        running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix, public_form_origins=ORIGIN) as it,
        it.anonymous(headers={"Origin": ORIGIN}) as form,
    ):
        await form.post("/v1/leads", json=lead("ada@example.com"))
        await execute(migrated_database_url, "UPDATE leads SET confirmation_sent_at = now() - interval '16 minutes'")
        await form.post("/v1/leads", json=lead("ada@example.com"))
        await form.post("/v1/leads", json=lead("ada@example.com"))  # within the new cool-down

    assert await fetch_all(migrated_database_url, "SELECT count(*) AS n FROM confirmation_emails") == [{"n": 2}]


# --- the link ------------------------------------------------------------------------------------


async def test_get_shows_a_button_and_changes_nothing(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": ORIGIN}) as form:
        await form.post("/v1/leads", json=lead("ada@example.com"))
    lead_id = await lead_id_of(intake, "ada@example.com")
    async with intake.anonymous() as browser:
        pages = [await browser.get(confirm_path(intake, lead_id)) for _ in range(3)]

    assert {page.status_code for page in pages} == {200}
    assert '<form method="post"><button type="submit">' in pages[0].text
    assert "<script" not in pages[0].text
    assert 'lang="en"' in pages[0].text
    assert pages[0].headers["x-frame-options"] == "DENY"
    rows = await fetch_all(intake.settings.database_url, "SELECT confirmed_at FROM leads")
    assert rows == [{"confirmed_at": None}]
    assert await outbox_types(intake) == ["lead.confirmation_requested"]


async def test_post_confirms_records_the_consent_and_queues_the_enrollment(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": ORIGIN}) as form:
        await form.post("/v1/leads", json=lead("ada@example.com"))
    lead_id = await lead_id_of(intake, "ada@example.com")
    async with intake.anonymous(headers={"User-Agent": "Mozilla/5.0 <b>Test</b>"}) as browser:
        first = await browser.post(confirm_path(intake, lead_id))
        second = await browser.post(confirm_path(intake, lead_id))
    read = await intake.http.get(f"/v1/leads/{lead_id}")

    assert (first.status_code, second.status_code) == (200, 200)
    assert "Subscription confirmed" in first.text
    assert "Already confirmed" in second.text
    assert await outbox_types(intake) == ["lead.accepted", "lead.confirmation_requested"]  # one lead.accepted
    consent = read.json()["consent"]
    assert consent["confirmed_at"] is not None
    assert consent["confirmed_ip"] == "127.0.0.1"
    assert consent["confirmed_user_agent"] == "Mozilla/5.0 <b>Test</b>"


@pytest.mark.parametrize(
    "path",
    [
        "/confirm/not-a-token",
        "/confirm/" + "A" * 5000,
        "/confirm/%3Cscript%3Ealert(1)%3C",
    ],
)
async def test_an_invalid_link_gets_a_clear_404_page(intake: Intake, path: str) -> None:
    async with intake.anonymous() as browser:
        shown = await browser.get(path)
        posted = await browser.post(path)

    for page in (shown, posted):
        assert page.status_code == 404
        assert "This link is not valid" in page.text
        assert "<script>" not in page.text


async def test_a_token_for_another_purpose_or_an_unknown_lead_does_not_confirm(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": ORIGIN}) as form:
        await form.post("/v1/leads", json=lead("ada@example.com"))
    lead_id = await lead_id_of(intake, "ada@example.com")
    async with intake.anonymous() as browser:
        other_purpose = await browser.post(confirm_path(intake, lead_id, Purpose.UNSUBSCRIBE))
        unknown = await browser.post(confirm_path(intake, uuid.uuid4()))

    assert (other_purpose.status_code, unknown.status_code) == (404, 404)
    assert await fetch_all(intake.settings.database_url, "SELECT confirmed_at FROM leads") == [{"confirmed_at": None}]


async def test_an_expired_link_gets_a_410_page_and_confirms_nothing(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": ORIGIN}) as form:
        await form.post("/v1/leads", json=lead("ada@example.com"))
    lead_id = await lead_id_of(intake, "ada@example.com")
    await execute(intake.settings.database_url, "UPDATE leads SET created_at = now() - interval '8 days'")
    async with intake.anonymous() as browser:
        shown = await browser.get(confirm_path(intake, lead_id))
        posted = await browser.post(confirm_path(intake, lead_id))

    assert (shown.status_code, posted.status_code) == (410, 410)
    assert "expired" in posted.text
    assert await outbox_types(intake) == ["lead.confirmation_requested"]


# --- enrollment ----------------------------------------------------------------------------------

DOUBLE_OPT_IN_SEQUENCE: dict[str, Any] = {
    "apiVersion": "healingwork.io/v1alpha1",
    "kind": "Sequence",
    "metadata": {"name": "newsletter", "namespace": "default"},
    "spec": {
        "trigger": {"sources": ["website"]},
        "doubleOptIn": True,
        "steps": [{"name": "first", "delay": "0s", "subject": "Issue 1", "html": "<p>Hello</p>"}],
    },
}


async def test_a_double_opt_in_sequence_waits_for_the_confirmation_while_others_enroll(intake: Intake) -> None:
    await apply_examples(intake.settings.database_url)
    pool = await open_pool(DatabaseSettings(database_url=intake.settings.database_url))
    async with pool, transaction(pool) as conn:
        await apply_sequence(conn, parse_sequence_document(DOUBLE_OPT_IN_SEQUENCE, "test"))

    # An API client's lead (DOUBLE_OPT_IN=public-forms asks nothing of it) matching both Sequences.
    response = await intake.http.post("/v1/leads", json=lead("ada@example.com"))
    lead_id = uuid.UUID(response.json()["id"])
    pool = await open_pool(DatabaseSettings(database_url=intake.settings.database_url))
    async with pool:
        async with transaction(pool) as conn:
            before = await enroll_lead(conn, lead_id)
        async with intake.anonymous() as browser:
            await browser.post(confirm_path(intake, lead_id))
        async with transaction(pool) as conn:
            after = await enroll_lead(conn, lead_id)

    assert sorted(await outbox_types(intake)) == ["lead.accepted", "lead.accepted", "lead.confirmation_requested"]
    names = await fetch_all(
        intake.settings.database_url,
        "SELECT s.name FROM enrollments e JOIN sequences s ON s.id = e.sequence_id ORDER BY e.created_at, s.name",
    )
    assert (len(before), len(after)) == (1, 1)
    assert [row["name"] for row in names] == ["welcome", "newsletter"]


async def test_a_lead_that_must_confirm_enrolls_nowhere_before_it_does(intake: Intake) -> None:
    await apply_examples(intake.settings.database_url)
    async with intake.anonymous(headers={"Origin": ORIGIN}) as form:
        await form.post("/v1/leads", json=lead("ada@example.com"))
    lead_id = await lead_id_of(intake, "ada@example.com")
    pool = await open_pool(DatabaseSettings(database_url=intake.settings.database_url))
    async with pool, transaction(pool) as conn:
        assert await enroll_lead(conn, lead_id) == []


# --- the confirmation email's send path ----------------------------------------------------------


async def queued_confirmation(intake: Intake, email: str) -> uuid.UUID:
    async with intake.anonymous(headers={"Origin": ORIGIN}) as form:
        await form.post("/v1/leads", json=lead(email))
    [row] = await fetch_all(
        intake.settings.database_url,
        "SELECT c.id FROM confirmation_emails c JOIN leads l ON l.id = c.lead_id WHERE l.email_normalized = %s",
        email,
    )
    return row["id"]  # type: ignore[return-value]


@pytest.fixture
async def sender(intake: Intake, mail_sink: MailSink) -> AsyncIterator[ConfirmationSender]:
    settings = make_settings(
        DispatcherSettings,
        intake.settings.database_url,
        "127.0.0.1:9",  # not contacted: the sender is driven directly
        "t",
        hmac_secret=intake.settings.hmac_secret,
        smtp_url=smtp_url_of(mail_sink),
        public_base_url="https://go.example.com",
    )
    pool = await open_pool(DatabaseSettings(database_url=intake.settings.database_url))
    smtp = SmtpPool(SmtpTarget.from_url(settings.smtp_url), 5.0, size=2, throttle_pause_s=0.01)
    try:
        yield ConfirmationSender(settings, pool, smtp, SharedRateLimiter(pool, "default", 0.0))
    finally:
        await smtp.close()
        await pool.close()


async def test_the_confirmation_email_is_sent_once_per_command(
    intake: Intake, sender: ConfirmationSender, mail_sink: MailSink
) -> None:
    email_id = await queued_confirmation(intake, "ada@example.com")

    first = await sender.send_batch([email_id, email_id])
    again = await sender.send_batch([email_id])  # a redelivered command

    assert (first, again) == ({email_id: "sent"}, {})
    [email] = mail_sink.messages()
    assert email["Message-ID"] == f"<{email_id}@example.com>"
    text = email.get_body(("plain",))
    assert text is not None
    assert "https://go.example.com/confirm/" in text.get_content()


async def test_a_suppressed_address_gets_no_confirmation_email(
    intake: Intake, sender: ConfirmationSender, mail_sink: MailSink
) -> None:
    email_id = await queued_confirmation(intake, "gone@example.com")
    await execute(
        intake.settings.database_url,
        "INSERT INTO suppressions (email_hash, reason) SELECT email_hash, 'unsubscribed' FROM leads",
    )

    assert await sender.send_batch([email_id]) == {email_id: "skipped"}
    assert mail_sink.messages() == []


async def test_a_template_file_replaces_the_built_in_email(tmp_path: Path) -> None:
    template_file = tmp_path / "confirm.html"
    template_file.write_text('<p>Bonjour {{ lead.first_name }} : <a href="{{ confirm_url }}">oui</a></p>')

    template = ConfirmationTemplate.load("Confirmez, {{ lead.first_name }}", str(template_file))

    assert "Bonjour" in template.html
    assert template.subject.startswith("Confirmez")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("<p>{{ confirm_url", "does not render"),
        ("<p>Welcome!</p>", "never shows {{ confirm_url }}"),
    ],
)
def test_a_broken_template_file_stops_the_start(tmp_path: Path, content: str, problem: str) -> None:
    template_file = tmp_path / "confirm.html"
    template_file.write_text(content)

    with pytest.raises(ConfigError, match="CONFIRMATION_TEMPLATE_FILE") as raised:
        ConfirmationTemplate.load("Confirm", str(template_file))
    assert problem in str(raised.value)


# --- expiry --------------------------------------------------------------------------------------


async def test_purge_deletes_expired_unconfirmed_leads_only(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": ORIGIN}) as form:
        for email in ("expired@example.com", "fresh@example.com", "confirmed@example.com"):
            await form.post("/v1/leads", json=lead(email))
    await intake.http.post("/v1/leads", json=lead("api@example.com"))
    async with intake.anonymous() as browser:
        await browser.post(confirm_path(intake, await lead_id_of(intake, "confirmed@example.com")))
    await execute(
        intake.settings.database_url,
        """UPDATE leads SET created_at = now() - interval '8 days'
           WHERE email_normalized IN ('expired@example.com', 'confirmed@example.com', 'api@example.com')""",
    )

    settings = job_settings(intake.settings.database_url, confirmation_expiry_hours=168)
    async with job_context(settings) as ctx:
        deleted = await purge(ctx)

    assert deleted["unconfirmed_leads"] == 1
    rows = await fetch_all(intake.settings.database_url, "SELECT email_normalized FROM leads ORDER BY 1")
    assert [row["email_normalized"] for row in rows] == [
        "api@example.com",
        "confirmed@example.com",
        "fresh@example.com",
    ]
    # The expired lead's confirmation email went with it; the two kept public-form leads keep theirs.
    assert await fetch_all(intake.settings.database_url, "SELECT count(*) AS n FROM confirmation_emails") == [{"n": 2}]


async def test_double_opt_in_is_stored_per_revision_and_a_sequence_without_it_as_before(
    migrated_database_url: str,
) -> None:
    plain = {**DOUBLE_OPT_IN_SEQUENCE, "metadata": {"name": "plain", "namespace": "default"}}
    plain["spec"] = {key: value for key, value in DOUBLE_OPT_IN_SEQUENCE["spec"].items() if key != "doubleOptIn"}
    pool = await open_pool(DatabaseSettings(database_url=migrated_database_url))
    async with pool:
        for _ in range(2):  # the second apply changes nothing: no new revision
            async with transaction(pool) as conn:
                await apply_sequence(conn, parse_sequence_document(DOUBLE_OPT_IN_SEQUENCE, "test"))
                await apply_sequence(conn, parse_sequence_document(plain, "test"))

    rows = await fetch_all(
        migrated_database_url,
        """SELECT s.name, r.revision, r.double_opt_in, r.spec ? 'doubleOptIn' AS in_spec
           FROM sequence_revisions r JOIN sequences s ON s.id = r.sequence_id ORDER BY 1""",
    )
    assert rows == [
        {"name": "newsletter", "revision": 1, "double_opt_in": True, "in_spec": True},
        {"name": "plain", "revision": 1, "double_opt_in": False, "in_spec": False},
    ]
