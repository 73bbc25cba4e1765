"""The whole path: HTTP lead → PostgreSQL + outbox → leads.accepted → scheduler → email.dispatch →
dispatcher → SMTP, with every service running against the real PostgreSQL, broker and SMTP server."""

from __future__ import annotations

import httpx
import pytest

from devstack.mailsink import MailSink
from services.common.config import DispatcherSettings, IntakeSettings, SchedulerSettings
from services.dispatcher.service import run_dispatcher
from services.scheduler.service import run_scheduler
from tests.support.intake import bearer, create_api_client
from tests.support.platform import (
    FROM_EMAIL,
    FROM_NAME,
    apply_examples,
    fetch_all,
    make_settings,
    running,
    serve_intake,
    smtp_url_of,
    wait_until,
)

pytestmark = pytest.mark.e2e


async def test_posted_lead_receives_the_welcome_email_exactly_once(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str, mail_sink: MailSink
) -> None:
    await apply_examples(migrated_database_url)
    common = (migrated_database_url, kafka_bootstrap_servers, topic_prefix)
    intake = make_settings(IntakeSettings, *common)
    scheduler = make_settings(SchedulerSettings, *common)
    dispatcher = make_settings(DispatcherSettings, *common, smtp_url=smtp_url_of(mail_sink))
    _, key = await create_api_client(migrated_database_url, "website", ["leads:write"])

    async with (
        running(run_scheduler, scheduler),
        running(run_dispatcher, dispatcher),
        serve_intake(intake) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30, headers=bearer(key)) as client,
    ):
        response = await client.post(
            "/v1/leads",
            json={
                "email": "Lin@Example.com",
                "first_name": "Lin",
                "source": "website",
                "consent": {"marketing": True, "text": "Send me the newsletter"},
            },
        )
        assert response.status_code == 202
        lead_id = response.json()["id"]

        async def sent() -> bool:
            rows = await fetch_all(migrated_database_url, "SELECT status FROM messages")
            return rows == [{"status": "sent"}]

        await wait_until(sent, timeout=60, what="the welcome email to be sent")
        # A duplicate submission within the window neither enrolls again nor sends again.
        duplicate = await client.post(
            "/v1/leads",
            json={"email": "lin@example.com", "source": "website", "consent": {"marketing": True}},
        )
        assert duplicate.json() == {"id": lead_id, "duplicate": True}

    [email] = mail_sink.messages()
    assert email["To"].addresses[0].addr_spec == "Lin@example.com"
    assert email["From"].addresses[0].addr_spec == FROM_EMAIL
    assert email["From"].addresses[0].display_name == FROM_NAME
    assert email["Subject"] == "Welcome to healingwork, Lin"
    enrollments = await fetch_all(migrated_database_url, "SELECT lead_id::text, next_step FROM enrollments")
    assert enrollments == [{"lead_id": lead_id, "next_step": 1}]
