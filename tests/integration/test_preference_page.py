"""The preference page behind the unsubscribe link, over real HTTP against PostgreSQL and the broker:
what it shows (masked, escaped, localized, under a strict CSP), what its form changes (one Sequence or
everything) and what one-click does under each ``unsubscribeScope``."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.common.config import DatabaseSettings, IntakeSettings
from services.common.db import open_pool, transaction
from services.common.identity import email_hash
from services.common.sequences import sequence_id
from services.scheduler.enrollment import enroll_lead
from tests.support.platform import fetch_all, make_settings, serve_intake
from tests.support.preferences import (
    COURSE,
    HOSTILE,
    HOSTILE_FIRST_NAME,
    TIPS,
    apply_sequences,
    enrolled_lead,
    page_path,
    sequence,
)

pytestmark = pytest.mark.integration

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def intake(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, IntakeSettings]]:
    await apply_sequences(migrated_database_url, [TIPS, HOSTILE, COURSE])
    settings = make_settings(IntakeSettings, migrated_database_url, kafka_bootstrap_servers, topic_prefix)
    async with serve_intake(settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        yield client, settings


async def enrollment_statuses(database_url: str) -> dict[str, object]:
    rows = await fetch_all(
        database_url,
        "SELECT s.name, e.status FROM enrollments e JOIN sequences s ON s.id = e.sequence_id",
    )
    return {str(row["name"]): row["status"] for row in rows}


async def test_the_page_shows_the_masked_address_and_every_sequence_with_a_ticked_checkbox(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    sent = await enrolled_lead(settings.database_url)

    response = await client.get(page_path(settings, sent["tips"]))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "g***@example.com" in page
    assert "grace@example.com" not in page
    for name in ("tips", "course", "hostile"):
        box = f'name="keep" value="{sequence_id("default", name)}" checked>'
        assert box in page
    assert ">Weekly tips</label>" in page
    assert ">Five-day course</label>" in page
    assert 'name="everything"' in page
    assert '<form method="post">' in page
    # Every checkbox has its label, and the page has a language.
    assert len(re.findall(r'<input type="checkbox" id="([^"]+)"', page)) == len(re.findall(r'<label for="', page))
    assert page.startswith('<!doctype html><html lang="en">')
    assert await enrollment_statuses(settings.database_url) == {
        "tips": "active",
        "course": "active",
        "hostile": "active",
    }


async def test_hostile_display_and_first_names_are_escaped_on_the_page(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    sent = await enrolled_lead(settings.database_url, first_name=HOSTILE_FIRST_NAME)

    page = (await client.get(page_path(settings, sent["hostile"]))).text

    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert "&lt;/label&gt;&lt;script&gt;alert(&quot;seq&quot;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in page


async def test_the_page_is_served_under_a_strict_content_security_policy_without_inline_script(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    sent = await enrolled_lead(settings.database_url)

    response = await client.get(page_path(settings, sent["tips"]))

    policy = response.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["form-action"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy
    assert "script-src" not in policy
    [style] = re.findall(r"<style>(.*?)</style>", response.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert directives["style-src"] == f"'sha256-{digest}'"
    assert " style=" not in response.text  # no inline style attribute (the hash allows the block only)
    assert response.headers["cache-control"] == "no-store, private"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


async def test_the_page_speaks_the_leads_locale_where_a_translation_exists(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    german = await enrolled_lead(settings.database_url, "hans@example.de", "Hans", locale="de-AT")
    french = await enrolled_lead(settings.database_url, "marie@example.fr", "Marie", locale="fr-FR")

    german_page = (await client.get(page_path(settings, german["tips"]), headers={"Accept-Language": "en"})).text
    french_page = (await client.get(page_path(settings, french["tips"]))).text
    browser_german = (
        await client.get(page_path(settings, french["tips"]), headers={"Accept-Language": "fr, de;q=0.8"})
    ).text

    assert german_page.startswith('<!doctype html><html lang="de">')
    assert "Von allem abmelden" in german_page
    assert "Hallo Hans," in german_page
    assert french_page.startswith('<!doctype html><html lang="en">')  # no French translation: English
    assert "Unsubscribe from everything" in french_page
    assert browser_german.startswith('<!doctype html><html lang="de">')


async def test_unticking_one_sequence_ends_that_enrollment_only(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    sent = await enrolled_lead(settings.database_url)
    keep = [sequence_id("default", "course"), sequence_id("default", "hostile")]
    form = "form=preferences&" + "&".join(f"keep={kept}" for kept in keep)

    for _ in range(2):  # a resubmitted form changes nothing more
        response = await client.post(page_path(settings, sent["tips"]), content=form, headers=FORM)
        assert response.status_code == 200

    assert 'role="status"' in response.text
    assert "Weekly tips" not in response.text  # left, so no longer listed
    assert await enrollment_statuses(settings.database_url) == {
        "tips": "cancelled",
        "course": "active",
        "hostile": "active",
    }
    assert await fetch_all(settings.database_url, "SELECT * FROM suppressions") == []
    left = await fetch_all(settings.database_url, "SELECT email_hash, sequence_id FROM sequence_unsubscribes")
    assert left == [
        {
            "email_hash": email_hash("grace@example.com", settings.suppression_hash_key),
            "sequence_id": sequence_id("default", "tips"),
        }
    ]
    unsubscribed = await fetch_all(settings.database_url, "SELECT message_id FROM events WHERE type = 'unsubscribed'")
    assert unsubscribed == [{"message_id": sent["tips"]}]
    # The enrollment left is announced once, as exited for unsubscribed, in the same transaction.
    announced = await fetch_all(
        settings.database_url,
        """SELECT convert_from(payload, 'UTF8')::jsonb AS m FROM outbox WHERE topic = %s""",
        settings.topic_lifecycle_events,
    )
    [message] = [row["m"] for row in announced]
    assert isinstance(message, dict)
    assert (message["type"], message["outcome"], message["reason"], message["sequence_id"]) == (
        "enrollment.ended",
        "exited",
        "unsubscribed",
        str(sequence_id("default", "tips")),
    )


async def test_an_address_that_left_a_sequence_is_not_enrolled_in_it_again_by_a_new_lead(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    sent = await enrolled_lead(settings.database_url)
    keep = "&".join(f"keep={sequence_id('default', name)}" for name in ("course", "hostile"))
    await client.post(page_path(settings, sent["tips"]), content=f"form=preferences&{keep}", headers=FORM)

    pool = await open_pool(DatabaseSettings(database_url=settings.database_url))
    try:
        lead_id = uuid.uuid4()
        async with transaction(pool) as conn:
            await conn.execute(  # as intake writes it: with the keyed address hash
                """INSERT INTO leads
                       (id, email, email_normalized, source, consent_marketing, email_hash, email_hash_keyed)
                   VALUES (%s, 'Grace@Example.com', 'grace@example.com', 'website', true, %s, true)""",
                (lead_id, email_hash("grace@example.com", settings.suppression_hash_key)),
            )
            enrolled = await enroll_lead(conn, lead_id)
    finally:
        await pool.close()

    assert len(enrolled) == 2
    rows = await fetch_all(
        settings.database_url,
        "SELECT s.name FROM enrollments e JOIN sequences s ON s.id = e.sequence_id WHERE e.lead_id = %s ORDER BY 1",
        lead_id,
    )
    assert rows == [{"name": "course"}, {"name": "hostile"}]


async def test_unsubscribe_from_everything_suppresses_the_address(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    sent = await enrolled_lead(settings.database_url)
    keep = sequence_id("default", "course")

    response = await client.post(
        page_path(settings, sent["course"]), content=f"form=preferences&keep={keep}&everything=yes", headers=FORM
    )

    assert response.status_code == 200
    assert "You are unsubscribed from all our emails." in response.text
    suppressions = await fetch_all(settings.database_url, "SELECT email_hash, reason FROM suppressions")
    assert suppressions == [
        {"email_hash": email_hash("grace@example.com", settings.suppression_hash_key), "reason": "unsubscribed"}
    ]


async def test_one_click_in_a_sequence_scoped_sequence_leaves_only_that_sequence(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    sent = await enrolled_lead(settings.database_url)

    response = await client.post(
        page_path(settings, sent["course"]), content="List-Unsubscribe=One-Click", headers=FORM
    )

    assert response.status_code == 200
    assert await enrollment_statuses(settings.database_url) == {
        "tips": "active",
        "course": "cancelled",
        "hostile": "active",
    }
    assert await fetch_all(settings.database_url, "SELECT * FROM suppressions") == []
    unsubscribed = await fetch_all(settings.database_url, "SELECT message_id FROM events WHERE type = 'unsubscribed'")
    assert unsubscribed == [{"message_id": sent["course"]}]


async def test_one_click_in_a_globally_scoped_sequence_suppresses_the_address_as_before(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    sent = await enrolled_lead(settings.database_url)

    response = await client.post(page_path(settings, sent["tips"]), content="List-Unsubscribe=One-Click", headers=FORM)

    assert response.status_code == 200
    suppressions = await fetch_all(settings.database_url, "SELECT email_hash FROM suppressions")
    assert suppressions == [{"email_hash": email_hash("grace@example.com", settings.suppression_hash_key)}]
    assert await fetch_all(settings.database_url, "SELECT * FROM sequence_unsubscribes") == []


async def test_a_form_naming_a_sequence_the_address_is_not_in_changes_nothing_else(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    sent = await enrolled_lead(settings.database_url)
    all_kept = "&".join(f"keep={sequence_id('default', name)}" for name in ("tips", "course", "hostile"))

    response = await client.post(
        page_path(settings, sent["tips"]),
        content=f"form=preferences&{all_kept}&keep={uuid.uuid4()}&keep=not-a-uuid",
        headers=FORM,
    )

    assert response.status_code == 200
    assert set((await enrollment_statuses(settings.database_url)).values()) == {"active"}
    assert await fetch_all(settings.database_url, "SELECT * FROM sequence_unsubscribes") == []


async def test_display_name_and_scope_are_stored_and_a_sequence_without_them_is_stored_as_before(
    migrated_database_url: str,
) -> None:
    plain = sequence("plain")
    await apply_sequences(migrated_database_url, [plain, COURSE])
    await apply_sequences(migrated_database_url, [plain, COURSE])  # unchanged: no new revision

    rows = await fetch_all(
        migrated_database_url,
        """SELECT s.name, r.revision, r.display_name, r.unsubscribe_scope,
                  r.spec ? 'displayName' AS has_display_name, r.spec ? 'unsubscribeScope' AS has_scope
           FROM sequence_revisions r JOIN sequences s ON s.id = r.sequence_id ORDER BY 1""",
    )
    assert rows == [
        {
            "name": "course",
            "revision": 1,
            "display_name": "Five-day course",
            "unsubscribe_scope": "Sequence",
            "has_display_name": True,
            "has_scope": True,
        },
        {
            "name": "plain",
            "revision": 1,
            "display_name": None,
            "unsubscribe_scope": "Global",
            "has_display_name": False,
            "has_scope": False,
        },
    ]
