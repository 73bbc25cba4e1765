"""Double opt-in end to end: a public form lead → one confirmation email → GET shows a page and changes
nothing → POST confirms → the welcome step is sent. Every service runs against the real PostgreSQL,
broker and SMTP sink; the link is the one in the email as received."""

from __future__ import annotations

import re
import secrets

import httpx
import pytest

from devstack.mailsink import MailSink
from services.common.config import DispatcherSettings, IntakeSettings, SchedulerSettings
from services.dispatcher.service import run_dispatcher
from services.scheduler.service import run_scheduler
from tests.support.platform import (
    apply_examples,
    fetch_all,
    make_settings,
    running,
    serve_intake,
    smtp_url_of,
    wait_until,
)

pytestmark = pytest.mark.e2e

ORIGIN = "https://www.example.com"
LEAD = {"email": "Noor@Example.com", "first_name": "Noor", "source": "website", "consent": {"marketing": True}}
CONFIRM_PATH = re.compile(r"https?://[^/\s\"]+(/confirm/[A-Za-z0-9_.-]+)")


def confirm_path_in(email_text: str) -> str:
    match = CONFIRM_PATH.search(email_text)
    assert match is not None, "the confirmation email carries a /confirm/ link"
    return match.group(1)


async def test_a_public_form_lead_enrolls_only_after_the_confirmation_post(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str, mail_sink: MailSink
) -> None:
    await apply_examples(migrated_database_url)
    common = (migrated_database_url, kafka_bootstrap_servers, topic_prefix)
    secret = secrets.token_hex(32)
    intake = make_settings(IntakeSettings, *common, hmac_secret=secret, public_form_origins=ORIGIN)
    scheduler = make_settings(SchedulerSettings, *common)
    dispatcher = make_settings(
        DispatcherSettings, *common, hmac_secret=secret, smtp_url=smtp_url_of(mail_sink), public_base_url=ORIGIN
    )
    async with (
        running(run_scheduler, scheduler),
        running(run_dispatcher, dispatcher),
        serve_intake(intake) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30, headers={"Origin": ORIGIN}) as form,
        httpx.AsyncClient(base_url=base_url, timeout=30, headers={"User-Agent": "Mozilla/5.0 (Inbox)"}) as browser,
    ):
        submitted = await form.post("/v1/leads", json=LEAD)
        assert (submitted.status_code, submitted.json()) == (202, {"status": "received"})

        async def confirmation_sent() -> bool:
            rows = await fetch_all(migrated_database_url, "SELECT status FROM confirmation_emails")
            return rows == [{"status": "sent"}]

        await wait_until(confirmation_sent, timeout=60, what="the confirmation email to be sent")
        [confirmation] = mail_sink.messages()
        assert confirmation["To"].addresses[0].addr_spec == "Noor@example.com"
        assert confirmation["Subject"] == "Please confirm your subscription"
        assert "List-Unsubscribe" not in confirmation  # not a subscription yet
        html_part = confirmation.get_body(("html",))
        assert html_part is not None
        path = confirm_path_in(html_part.get_content())

        # Resubmitted within the cool-down: the same answer, and no second email is even queued.
        again = await form.post("/v1/leads", json={**LEAD, "email": "noor@example.com"})
        assert (again.status_code, again.json()) == (202, {"status": "received"})
        assert await fetch_all(migrated_database_url, "SELECT count(*) AS n FROM confirmation_emails") == [{"n": 1}]

        # A mail scanner (or the person) opens the link: a page with a button, nothing confirmed.
        page = await browser.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert '<form method="post">' in page.text
        assert "<script" not in page.text
        unconfirmed = await fetch_all(migrated_database_url, "SELECT confirmed_at, enrolled_at FROM leads")
        assert unconfirmed == [{"confirmed_at": None, "enrolled_at": None}]
        assert await fetch_all(migrated_database_url, "SELECT id FROM enrollments") == []

        confirmed = await browser.post(path)
        assert confirmed.status_code == 200
        assert "Subscription confirmed" in confirmed.text

        async def welcome_sent() -> bool:
            rows = await fetch_all(migrated_database_url, "SELECT status FROM messages")
            return rows == [{"status": "sent"}]

        await wait_until(welcome_sent, timeout=60, what="the welcome email to be sent after confirmation")
        twice = await browser.post(path)
        assert (twice.status_code, "Already confirmed" in twice.text) == (200, True)

    _confirmation_email, welcome = mail_sink.messages()
    assert welcome["Subject"] == "Welcome to healingwork, Noor"
    [record] = await fetch_all(
        migrated_database_url,
        """SELECT confirmed_at IS NOT NULL AS confirmed, host(confirmed_ip) AS ip, confirmed_user_agent
           FROM leads""",
    )
    assert record == {"confirmed": True, "ip": "127.0.0.1", "confirmed_user_agent": "Mozilla/5.0 (Inbox)"}
