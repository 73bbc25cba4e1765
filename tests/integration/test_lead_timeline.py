"""GET /v1/leads/{id}/timeline and GET /v1/leads/export (issue 17, part 3) over real HTTP, against
PostgreSQL, a real broker and real SMTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg_pool
import pytest

from devstack.mailsink import MailSink
from services.common.config import DispatcherSettings
from services.common.db import Connection, open_pool, transaction
from services.common.tokens import Purpose, sign_token
from services.dispatcher.dispatch import Dispatcher
from services.dispatcher.smtp import SmtpPool, SmtpTarget
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead
from tests.support.intake import Intake, running_intake
from tests.support.platform import apply_examples, make_settings, smtp_url_of

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


@dataclass
class Platform:
    intake: Intake
    dispatcher: Dispatcher
    pool: Pool


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
    )
    pool = await open_pool(settings)
    smtp = SmtpPool(SmtpTarget.from_url(settings.smtp_url), settings.smtp_timeout_s, size=1, throttle_pause_s=0.01)
    try:
        async with running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix) as intake:
            yield Platform(intake, Dispatcher(settings, pool, smtp), pool)
    finally:
        await smtp.close()
        await pool.close()


async def submit(platform: Platform, email: str = "grace@example.com") -> uuid.UUID:
    response = await platform.intake.http.post(
        "/v1/leads",
        json={"email": email, "first_name": "Grace", "source": "website", "consent": {"marketing": True}},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


async def sent_step(platform: Platform, lead_id: uuid.UUID) -> uuid.UUID:
    async with transaction(platform.pool) as conn:
        await enroll_lead(conn, lead_id)
        [step] = await emit_due_steps(conn, limit=10, topic="email.dispatch")
    assert await platform.dispatcher.dispatch(step.message_id) == "sent"
    return step.message_id


async def engaged_lead(platform: Platform) -> uuid.UUID:
    """A lead that was sent a step, opened it (once by a privacy proxy), clicked and unsubscribed."""
    intake = platform.intake
    lead_id = await submit(platform)
    message_id = await sent_step(platform, lead_id)
    secret = intake.settings.hmac_secret
    async with intake.anonymous() as anonymous:
        await anonymous.get(f"/t/o/{sign_token(secret, Purpose.OPEN, message_id)}", headers={"User-Agent": BROWSER})
        await anonymous.head(f"/t/o/{sign_token(secret, Purpose.OPEN, message_id)}")
        click = sign_token(secret, Purpose.CLICK, message_id, "https://example.com/pricing?ref=grace")
        await anonymous.get(f"/t/c/{click}", headers={"User-Agent": BROWSER})
        unsubscribed = await anonymous.post(f"/u/{sign_token(secret, Purpose.UNSUBSCRIBE, message_id)}")
        assert unsubscribed.status_code == 200
    return lead_id


async def test_the_timeline_shows_everything_that_happened_in_order(platform: Platform) -> None:
    lead_id = await engaged_lead(platform)

    response = await platform.intake.http.get(f"/v1/leads/{lead_id}/timeline")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["lead_id"] == str(lead_id)
    assert body["next_cursor"] is None
    entries = body["entries"]
    assert [e["kind"] for e in entries] == [
        "lead.accepted",
        "consent.recorded",
        "enrollment.started",
        "step.sent",
        "email.opened",
        "email.opened",
        "email.clicked",
        "email.unsubscribed",
        "suppression.added",
    ]
    times = [e["at"] for e in entries]
    assert times == sorted(times)
    accepted, consent, enrolled, sent, opened, proxied, clicked, _, suppressed = entries
    assert accepted["properties"]["source"] == "website"
    assert consent["properties"]["marketing"] is True
    assert enrolled["properties"]["sequence"].endswith("/welcome")
    assert sent["properties"]["step_position"] == 0
    assert sent["properties"]["sequence"].endswith("/welcome")
    assert (opened["properties"]["automated"], proxied["properties"]["automated"]) == (False, True)
    assert clicked["properties"]["detail"] == "https://example.com/pricing"
    assert suppressed["properties"]["reason"] == "unsubscribed"


async def test_duplicate_submissions_are_folded_into_accepted_with_or_without_an_idempotency_key(
    platform: Platform,
) -> None:
    lead_id = await submit(platform, "ada@example.com")
    body = {"email": "Ada@Example.com", "source": "website", "consent": {"marketing": True}}
    for headers in ({"Idempotency-Key": uuid.uuid4().hex}, {}):
        again = await platform.intake.http.post("/v1/leads", json=body, headers=headers)
        assert again.status_code == 200, again.text
        assert again.json() == {"id": str(lead_id), "duplicate": True}

    response = await platform.intake.http.get(f"/v1/leads/{lead_id}/timeline")

    assert response.status_code == 200, response.text
    [accepted] = [e for e in response.json()["entries"] if e["kind"] == "lead.accepted"]
    assert accepted["properties"]["duplicates"] == 2
    assert accepted["properties"]["last_duplicate_at"] >= accepted["at"]


async def test_the_timeline_pages_with_a_cursor_and_loses_nothing(platform: Platform) -> None:
    lead_id = await engaged_lead(platform)
    whole = (await platform.intake.http.get(f"/v1/leads/{lead_id}/timeline")).json()["entries"]

    pages, cursor = [], None
    while True:
        params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await platform.intake.http.get(f"/v1/leads/{lead_id}/timeline", params=params)
        assert response.status_code == 200
        body = response.json()
        assert len(body["entries"]) <= 2
        pages.append(body["entries"])
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert len(pages) == 5
    assert [e for page in pages for e in page] == whole


async def test_a_cursor_that_was_not_issued_is_a_problem_naming_the_field(platform: Platform) -> None:
    lead_id = await submit(platform)

    response = await platform.intake.http.get(f"/v1/leads/{lead_id}/timeline", params={"cursor": "bm90LWEtY3Vyc29y"})

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == ["cursor"]


async def test_the_timeline_needs_leads_read(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with running_intake(
        migrated_database_url, kafka_bootstrap_servers, topic_prefix, scopes=["leads:write"]
    ) as intake:
        response = await intake.http.get(f"/v1/leads/{uuid.uuid4()}/timeline")
        export = await intake.http.get("/v1/leads/export", params={"email": "grace@example.com"})

    assert (response.status_code, export.status_code) == (403, 403)


async def test_the_export_holds_every_lead_of_the_address_and_nothing_of_others(platform: Platform) -> None:
    intake = platform.intake
    first = await engaged_lead(platform)
    async with transaction(platform.pool) as conn:  # the duplicate window has passed: a second lead
        await conn.execute("UPDATE lead_identities SET accepted_at = now() - interval '2 days'")
    second = await submit(platform, "Grace@Example.com")
    await submit(platform, "ada@example.com")

    response = await intake.http.get("/v1/leads/export", params={"email": " GRACE@example.com "})

    assert response.status_code == 200, response.text
    document = response.json()
    assert document["email"] == "grace@example.com"
    assert [entry["lead"]["id"] for entry in document["leads"]] == [str(first), str(second)]
    assert "ada@example.com" not in response.text
    first_timeline = [e["kind"] for e in document["leads"][0]["timeline"]]
    assert first_timeline[0] == "lead.accepted"
    assert "email.clicked" in first_timeline
    assert document["leads"][0]["lead"]["first_name"] == "Grace"
    assert document["suppression"]["reason"] == "unsubscribed"


async def test_after_erasure_timeline_is_404_and_export_holds_nothing_personal(platform: Platform) -> None:
    intake = platform.intake
    lead_id = await engaged_lead(platform)

    assert (await intake.http.delete(f"/v1/leads/{lead_id}")).status_code == 204

    timeline = await intake.http.get(f"/v1/leads/{lead_id}/timeline")
    export = await intake.http.get("/v1/leads/export", params={"email": "grace@example.com"})
    assert timeline.status_code == 404
    assert export.status_code == 200
    document = export.json()
    assert document["leads"] == []
    assert document["suppression"]["reason"] == "erased"
    assert document["suppression"]["detail"] == ""
    assert "grace" not in export.text.lower().replace('"email":"grace@example.com"', "")


async def test_an_unknown_lead_has_no_timeline(platform: Platform) -> None:
    response = await platform.intake.http.get(f"/v1/leads/{uuid.uuid4()}/timeline")

    assert response.status_code == 404


async def test_leaving_one_sequence_appears_on_the_timeline(platform: Platform) -> None:
    lead_id = await submit(platform)
    await sent_step(platform, lead_id)
    async with transaction(platform.pool) as conn:  # what the preference page records for "leave this one"
        await conn.execute(
            """INSERT INTO sequence_unsubscribes (email_hash, sequence_id, detail)
               SELECT l.email_hash, e.sequence_id, 'preference page' FROM leads l JOIN enrollments e ON e.lead_id = l.id
               WHERE l.id = %s""",
            (lead_id,),
        )

    entries = (await platform.intake.http.get(f"/v1/leads/{lead_id}/timeline")).json()["entries"]

    left = entries[-1]
    assert left["kind"] == "sequence.left"
    assert left["properties"]["sequence"].endswith("/welcome")
    assert left["properties"]["detail"] == "preference page"


async def test_the_double_opt_in_confirmation_appears_in_the_consent_story(platform: Platform) -> None:
    lead_id = await submit(platform)
    async with transaction(platform.pool) as conn:  # as double opt-in records them (services/intake/double_opt_in.py)
        await conn.execute(
            "INSERT INTO confirmation_emails (id, lead_id, status, sent_at) VALUES (%s, %s, 'sent', now())",
            (uuid.uuid4(), lead_id),
        )
        await conn.execute(
            """UPDATE leads SET confirmed_at = now() + interval '1 minute', confirmed_ip = '203.0.113.9',
                                confirmed_user_agent = 'Mozilla/5.0 (confirming)' WHERE id = %s""",
            (lead_id,),
        )

    entries = (await platform.intake.http.get(f"/v1/leads/{lead_id}/timeline")).json()["entries"]

    kinds = [e["kind"] for e in entries]
    assert kinds == ["lead.accepted", "consent.recorded", "confirmation.requested", "consent.confirmed"]
    assert entries[2]["properties"]["status"] == "sent"
    assert entries[3]["properties"] == {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (confirming)"}
