"""The reconcile promise, end to end: a broker that loses everything after a lead was accepted (and
its lead.accepted published) heals with one run of retry-failed — the email is sent exactly once."""

from __future__ import annotations

import asyncio

import pytest

from devstack.embedded import EmbeddedBroker
from devstack.mailsink import MailSink
from services.common.config import DispatcherSettings, IntakeSettings, SchedulerSettings
from services.dispatcher.service import run_dispatcher
from services.jobs.retry_failed import retry_failed
from services.jobs.runner import run_job
from services.scheduler.service import run_scheduler
from tests.support.intake import running_intake
from tests.support.jobs import job_settings
from tests.support.platform import (
    apply_examples,
    fetch_all,
    make_settings,
    running,
    smtp_url_of,
    wait_until,
)

pytestmark = pytest.mark.e2e


async def test_lead_lost_by_the_broker_is_sent_exactly_once_after_retry_failed(
    migrated_database_url: str, embedded_broker: EmbeddedBroker, topic_prefix: str, mail_sink: MailSink
) -> None:
    await asyncio.to_thread(embedded_broker.start)  # idempotent; another test may have stopped it
    await apply_examples(migrated_database_url)
    common = (migrated_database_url, embedded_broker.bootstrap_servers, topic_prefix)
    intake = make_settings(IntakeSettings, *common)
    scheduler = make_settings(SchedulerSettings, *common)
    dispatcher = make_settings(DispatcherSettings, *common, smtp_url=smtp_url_of(mail_sink))
    # Reconcile anything older than a moment (the production default is 15 minutes).
    job = job_settings(
        migrated_database_url,
        unenrolled_lead_after_s=0.01,
        stuck_queued_after_s=0.01,
        topic_leads_accepted=intake.topic_leads_accepted,
        topic_email_dispatch=intake.topic_email_dispatch,
        topic_email_events=intake.topic_email_events,
        topic_email_dlq=intake.topic_email_dlq,
    )

    async def outbox_drained() -> bool:
        rows = await fetch_all(migrated_database_url, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
        return rows == [{"n": 0}]

    # 1. The lead is accepted and its lead.accepted reaches the broker, while no scheduler runs.
    async with running_intake(*common) as served:
        response = await served.http.post(
            "/v1/leads", json={"email": "mae@example.com", "source": "website", "consent": {"marketing": True}}
        )
        assert response.status_code == 202
        await wait_until(outbox_drained, what="lead.accepted published to the broker")

    # 2. The broker loses everything it held (memory storage: a restart is a total loss).
    await asyncio.to_thread(embedded_broker.restart)

    async with running(run_scheduler, scheduler), running(run_dispatcher, dispatcher):
        # 3. The lead is in PostgreSQL, not enrolled; the only copy of lead.accepted died with the broker.
        assert await fetch_all(migrated_database_url, "SELECT id FROM enrollments") == []
        outcome = await run_job("retry-failed", job, retry_failed)
        assert outcome.counts["republished_leads"] == 1

        async def sent() -> bool:
            return await fetch_all(migrated_database_url, "SELECT status FROM messages") == [{"status": "sent"}]

        await wait_until(sent, timeout=60, what="the welcome email to be sent")
        # 4. Reconciling again finds nothing to do: nothing is sent twice.
        again = await run_job("retry-failed", job, retry_failed)
        assert (again.counts["republished_leads"], again.counts["republished_messages"]) == (0, 0)
        await wait_until(outbox_drained, what="the outbox to drain")

    [email] = mail_sink.messages()
    assert email["To"].addresses[0].addr_spec == "mae@example.com"
    [event] = await fetch_all(migrated_database_url, "SELECT count(*) AS n FROM events WHERE type = 'sent'")
    assert event == {"n": 1}
