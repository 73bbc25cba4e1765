"""Tracking and unsubscribe links served by intake over real HTTP, against PostgreSQL and the broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.common.config import DatabaseSettings, IntakeSettings
from services.common.db import open_pool, transaction
from services.common.identity import email_hash
from services.common.tokens import Purpose, sign_token
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead
from tests.support.platform import apply_examples, fetch_all, make_settings, serve_intake
from tests.unit.test_tokens import tampered_variants

pytestmark = pytest.mark.integration

PREVIOUS_SECRET = "7c1e9a4b2d6f8e0a3c5b7d9f1e2a4c6b8d0f2e4a"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


@pytest.fixture
async def intake(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, IntakeSettings]]:
    await apply_examples(migrated_database_url)
    settings = make_settings(
        IntakeSettings,
        migrated_database_url,
        kafka_bootstrap_servers,
        topic_prefix,
        hmac_secret_previous=PREVIOUS_SECRET,
    )
    async with serve_intake(settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        yield client, settings


async def sent_message(database_url: str, email: str = "grace@example.com") -> uuid.UUID:
    pool = await open_pool(DatabaseSettings(database_url=database_url))
    try:
        lead_id = uuid.uuid4()
        async with transaction(pool) as conn:
            await conn.execute(
                """INSERT INTO leads (id, email, email_normalized, first_name, source, consent_marketing)
                   VALUES (%s, %s, %s, 'Grace', 'website', true)""",
                (lead_id, email, email.lower()),
            )
            await enroll_lead(conn, lead_id)
            [step] = await emit_due_steps(conn, limit=10, topic="email.dispatch")
            await conn.execute("UPDATE messages SET status = 'sent', sent_at = now() WHERE id = %s", (step.message_id,))
        return step.message_id
    finally:
        await pool.close()


async def events(settings: IntakeSettings) -> list[dict[str, object]]:
    return await fetch_all(
        settings.database_url,
        """SELECT type, automated, detail, message_id, lead_id IS NOT NULL AS lead, sequence_id IS NOT NULL AS seq,
                  revision, step_position
           FROM events ORDER BY id""",
    )


async def test_the_open_pixel_is_a_gif_and_records_the_open_with_its_message_context(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    message_id = await sent_message(settings.database_url)
    token = sign_token(settings.hmac_secret, Purpose.OPEN, message_id)

    response = await client.get(f"/t/o/{token}", headers={"User-Agent": BROWSER})

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content.startswith(b"GIF89a")
    assert "no-store" in response.headers["cache-control"]
    assert await events(settings) == [
        {
            "type": "opened",
            "automated": False,
            "detail": "",
            "message_id": message_id,
            "lead": True,
            "seq": True,
            "revision": 1,
            "step_position": 0,
        }
    ]
    published = await fetch_all(
        settings.database_url, "SELECT key FROM outbox WHERE topic = %s", settings.topic_email_events
    )
    assert published == [{"key": str(message_id)}]


async def test_opens_by_a_privacy_proxy_are_recorded_but_flagged(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    message_id = await sent_message(settings.database_url)
    token = sign_token(settings.hmac_secret, Purpose.OPEN, message_id)

    await client.get(f"/t/o/{token}", headers={"User-Agent": "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"})

    assert [(e["type"], e["automated"]) for e in await events(settings)] == [("opened", True)]


async def test_a_click_redirects_to_the_bound_url_only(intake: tuple[httpx.AsyncClient, IntakeSettings]) -> None:
    client, settings = intake
    message_id = await sent_message(settings.database_url)
    token = sign_token(settings.hmac_secret, Purpose.CLICK, message_id, "https://example.com/offer?a=1")

    response = await client.get(
        f"/t/c/{token}",
        params={"url": "https://evil.example/", "next": "//evil.example"},
        headers={"User-Agent": BROWSER},
    )

    assert response.status_code == 302
    assert response.headers["location"] == "https://example.com/offer?a=1"
    assert [(e["type"], e["automated"], e["detail"]) for e in await events(settings)] == [
        # Stored without the query, where templates put personalised parameters (docs/security.md).
        ("clicked", False, "https://example.com/offer")
    ]


async def test_a_link_scanner_head_request_is_flagged(intake: tuple[httpx.AsyncClient, IntakeSettings]) -> None:
    client, settings = intake
    message_id = await sent_message(settings.database_url)
    token = sign_token(settings.hmac_secret, Purpose.CLICK, message_id, "https://example.com/")

    response = await client.head(f"/t/c/{token}", headers={"User-Agent": BROWSER})

    assert response.status_code == 302
    assert [(e["type"], e["automated"]) for e in await events(settings)] == [("clicked", True)]


async def test_tampered_truncated_or_wrong_purpose_tokens_get_404_and_change_nothing(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    message_id = await sent_message(settings.database_url)
    secret = settings.hmac_secret
    click = sign_token(secret, Purpose.CLICK, message_id, "https://example.com/")
    unsubscribe = sign_token(secret, Purpose.UNSUBSCRIBE, message_id)
    open_token = sign_token(secret, Purpose.OPEN, message_id)
    foreign = sign_token("a-different-secret-of-sufficient-length-0123", Purpose.UNSUBSCRIBE, message_id)
    attempts = [
        *(("GET", f"/t/c/{bad}") for bad in tampered_variants(click) if bad),
        *(("POST", f"/u/{bad}") for bad in tampered_variants(unsubscribe) if bad),
        ("GET", f"/t/o/{click}"),  # a click token used as an open
        ("POST", f"/u/{open_token}"),  # an open token used to unsubscribe
        ("GET", f"/t/c/{unsubscribe}"),
        ("GET", f"/u/{foreign}"),
        ("POST", f"/u/{foreign}"),
    ]

    for method, path in attempts:
        response = await client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert "location" not in response.headers

    assert await events(settings) == []
    assert await fetch_all(settings.database_url, "SELECT * FROM suppressions") == []


async def test_links_signed_with_the_previous_secret_keep_working(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    message_id = await sent_message(settings.database_url)

    response = await client.get(f"/t/o/{sign_token(PREVIOUS_SECRET, Purpose.OPEN, message_id)}")

    assert response.status_code == 200


async def test_the_unsubscribe_page_changes_nothing(intake: tuple[httpx.AsyncClient, IntakeSettings]) -> None:
    client, settings = intake
    message_id = await sent_message(settings.database_url)

    response = await client.get(f"/u/{sign_token(settings.hmac_secret, Purpose.UNSUBSCRIBE, message_id)}")

    assert response.status_code == 200
    assert '<form method="post">' in response.text
    assert await fetch_all(settings.database_url, "SELECT * FROM suppressions") == []


async def test_one_click_unsubscribe_suppresses_the_address_once_without_login(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    message_id = await sent_message(settings.database_url, "Grace@Example.com")
    path = f"/u/{sign_token(settings.hmac_secret, Purpose.UNSUBSCRIBE, message_id)}"

    for _ in range(3):  # mail clients may retry; RFC 8058 asks for idempotence
        response = await client.post(
            path,
            content="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200

    suppressions = await fetch_all(settings.database_url, "SELECT email_hash, reason FROM suppressions")
    assert suppressions == [
        {"email_hash": email_hash("grace@example.com", settings.suppression_hash_key), "reason": "unsubscribed"}
    ]
    assert [e["type"] for e in await events(settings)] == ["unsubscribed"]
    announced = await fetch_all(
        settings.database_url, "SELECT key FROM outbox WHERE topic = %s", settings.topic_leads_suppressed
    )
    assert announced == [{"key": email_hash("grace@example.com", settings.suppression_hash_key)}]
