"""One-click unsubscribe from a received email stops the next step: intake suppresses the address
and announces it on leads.suppressed, the scheduler cancels the enrollment, and the dispatcher would
skip any step already queued."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from devstack.mailsink import MailSink
from services.common.config import DatabaseSettings, DispatcherSettings, IntakeSettings, SchedulerSettings
from services.common.db import connect
from services.common.sequences import apply_sequence, parse_sequence_document
from services.dispatcher.service import run_dispatcher
from services.scheduler.service import run_scheduler
from tests.support.intake import running_intake
from tests.support.platform import fetch_all, make_settings, running, smtp_url_of, wait_until

pytestmark = pytest.mark.e2e

# Two steps a few seconds apart, so "the next step" comes within the test.
DRIP = {
    "apiVersion": "healingwork.io/v1alpha1",
    "kind": "Sequence",
    "metadata": {"name": "drip"},
    "spec": {
        "trigger": {"sources": ["website"]},
        "steps": [
            {"name": "hello", "subject": "Hello {{ lead.first_name }}", "text": "Hi"},
            {"name": "follow-up", "delay": "3s", "subject": "Following up", "text": "Still there?"},
        ],
    },
}


def lead(email: str) -> dict[str, object]:
    return {"email": email, "first_name": "Ann", "source": "website", "consent": {"marketing": True}}


async def test_one_click_unsubscribe_stops_the_next_step(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str, mail_sink: MailSink
) -> None:
    conn = await connect(DatabaseSettings(database_url=migrated_database_url))
    async with conn, conn.transaction():
        await apply_sequence(conn, parse_sequence_document(DRIP, "drip"))
    common = (migrated_database_url, kafka_bootstrap_servers, topic_prefix)
    intake = make_settings(IntakeSettings, *common)
    scheduler = make_settings(SchedulerSettings, *common)
    dispatcher = make_settings(
        DispatcherSettings, *common, smtp_url=smtp_url_of(mail_sink), hmac_secret=intake.hmac_secret
    )

    async with (
        running(run_scheduler, scheduler),
        running(run_dispatcher, dispatcher),
        running_intake(*common, hmac_secret=intake.hmac_secret) as served,
        served.anonymous() as mailbox_provider,
    ):
        client = served.http  # the lead source, with an API key
        leaver = (await client.post("/v1/leads", json=lead("leaver@example.com"))).json()["id"]
        async with asyncio.timeout(60):
            [first] = await mail_sink.wait_for_messages_async(1)
        stayer = (await client.post("/v1/leads", json=lead("stayer@example.com"))).json()["id"]
        https_url = first["List-Unsubscribe"].split(",")[0].strip().strip("<>")

        # What a mailbox provider does for RFC 8058: POST the https URL, no cookies, no login.
        response = await mailbox_provider.post(
            urlsplit(https_url).path,
            content="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200

        async def cancelled() -> bool:
            rows = await fetch_all(migrated_database_url, "SELECT status FROM enrollments WHERE lead_id = %s", leaver)
            return rows == [{"status": "cancelled"}]

        await wait_until(cancelled, timeout=30, what="the leaver's enrollment cancelled via leads.suppressed")

        async def stayer_followed_up() -> bool:
            rows = await fetch_all(
                migrated_database_url,
                "SELECT 1 FROM messages WHERE lead_id = %s AND step_position = 1 AND status = 'sent'",
                stayer,
            )
            return len(rows) == 1

        # The stayer enrolled after the leaver, so when the stayer's follow-up is out, the leaver's was due.
        await wait_until(stayer_followed_up, timeout=30, what="the follow-up of the lead who stayed")

    leaver_messages = await fetch_all(
        migrated_database_url, "SELECT step_position, status FROM messages WHERE lead_id = %s", leaver
    )
    assert leaver_messages == [{"step_position": 0, "status": "sent"}]
    recipients = sorted(rcpt for _, rcpts in mail_sink.envelopes for rcpt in rcpts)
    assert recipients == ["leaver@example.com", "stayer@example.com", "stayer@example.com"]
