"""A reacting Sequence through every real part: HTTP lead → scheduler → dispatcher → SMTP, an A/B
variant chosen and sent, a waitFor released by a custom event posted to the API, and the goal
(another custom event) ending the enrollment before its last step."""

from __future__ import annotations

import uuid

import httpx
import pytest

from devstack.mailsink import MailSink
from services.common.config import DatabaseSettings, DispatcherSettings, IntakeSettings, SchedulerSettings
from services.common.db import connect
from services.common.sequences import apply_sequence, parse_sequence_document
from services.common.step_rules import choose_variant, rules_of_spec
from services.dispatcher.service import run_dispatcher
from services.scheduler.service import run_scheduler
from tests.support.intake import bearer, create_api_client
from tests.support.platform import fetch_all, make_settings, running, serve_intake, smtp_url_of, wait_until

pytestmark = pytest.mark.e2e

SEQUENCE = {
    "apiVersion": "healingwork.io/v1alpha1",
    "kind": "Sequence",
    "metadata": {"name": "react"},
    "spec": {
        "trigger": {"sources": ["website"]},
        "exitWhen": "events.exists(e, e.type == 'purchased')",
        "steps": [
            {
                "name": "hello",
                "html": "<p>Hi</p>",
                "variants": [{"name": "a", "subject": "Subject A"}, {"name": "b", "subject": "Subject B"}],
            },
            {
                "name": "guide",
                "subject": "Your guide",
                "html": "<p>The guide</p>",
                "waitFor": {"condition": "events.exists(e, e.type == 'asked-for-guide')", "timeout": "3d"},
            },
            {"name": "nudge", "delay": "1d", "subject": "Still there?", "html": "<p>…</p>"},
        ],
    },
}


async def test_a_variant_is_sent_a_wait_is_released_by_an_event_and_the_goal_ends_the_enrollment(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str, mail_sink: MailSink
) -> None:
    resource = parse_sequence_document(SEQUENCE, "react")
    conn = await connect(DatabaseSettings(database_url=migrated_database_url))
    async with conn, conn.transaction():
        await apply_sequence(conn, resource)
    common = (migrated_database_url, kafka_bootstrap_servers, topic_prefix)
    intake = make_settings(IntakeSettings, *common)
    scheduler = make_settings(SchedulerSettings, *common)
    dispatcher = make_settings(DispatcherSettings, *common, smtp_url=smtp_url_of(mail_sink))
    _, key = await create_api_client(migrated_database_url, "crm", ["leads:write", "events:write"])

    async def sent(count: int) -> bool:
        rows = await fetch_all(migrated_database_url, "SELECT 1 FROM messages WHERE status = 'sent'")
        return len(rows) == count

    async with (
        running(run_scheduler, scheduler),
        running(run_dispatcher, dispatcher),
        serve_intake(intake) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30, headers=bearer(key)) as client,
    ):
        response = await client.post(
            "/v1/leads", json={"email": "kim@example.com", "source": "website", "consent": {"marketing": True}}
        )
        lead = uuid.UUID(response.json()["id"])
        await wait_until(lambda: sent(1), timeout=60, what="the first step to be sent")

        async def waiting() -> bool:
            rows = await fetch_all(migrated_database_url, "SELECT wait_deadline FROM enrollments")
            return rows != [] and rows[0]["wait_deadline"] is not None

        await wait_until(waiting, timeout=30, what="the guide step to wait")
        asked = await client.post(f"/v1/leads/{lead}/events", json={"type": "asked-for-guide"})
        assert asked.status_code == 201
        await wait_until(lambda: sent(2), timeout=60, what="the guide to be sent once the event arrived")

        bought = await client.post("/v1/events", json={"type": "purchased", "email": "kim@example.com"})
        assert bought.status_code == 201

        async def exited() -> bool:
            rows = await fetch_all(migrated_database_url, "SELECT exit_reason FROM enrollments")
            return rows == [{"exit_reason": "goal"}]

        await wait_until(exited, timeout=30, what="the goal to end the enrollment")

    [sequence_row] = await fetch_all(migrated_database_url, "SELECT id FROM sequences")
    variant = choose_variant(lead, sequence_row["id"], rules_of_spec(resource.spec).steps[0])  # type: ignore[arg-type]
    subjects = [message["Subject"] for message in mail_sink.messages()]
    assert subjects == [f"Subject {variant.upper()}", "Your guide"]  # type: ignore[union-attr]
    [message] = await fetch_all(migrated_database_url, "SELECT variant FROM messages WHERE step_position = 0")
    assert message == {"variant": variant}
