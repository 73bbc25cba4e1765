"""Outages of a dependency while every service keeps running: the broker frozen (SIGSTOP) and
PostgreSQL stopped. Intake keeps accepting leads while the broker is frozen (the outbox holds them) and
they flow once it answers again; while PostgreSQL is down intake answers 503 with Retry-After, and
intake, scheduler and dispatcher carry on when it is back, without being restarted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.embedded import EmbeddedBroker, EmbeddedPostgres
from devstack.mailsink import MailSink
from services.common.config import DispatcherSettings, SchedulerSettings
from services.common.migrate import apply_migrations
from services.dispatcher.service import run_dispatcher
from services.scheduler.service import run_scheduler
from tests.support.intake import running_intake
from tests.support.platform import apply_examples, fetch_all, make_settings, running, smtp_url_of, wait_until

pytestmark = pytest.mark.e2e


def lead(address: str) -> dict[str, object]:
    return {"email": address, "source": "website", "consent": {"marketing": True}}


async def recipients(sink: MailSink) -> list[str]:
    return sorted(m["To"].addresses[0].addr_spec for m in await asyncio.to_thread(sink.messages))


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test alone, to stop and start under running services."""
    server = EmbeddedPostgres(tmp_path / "pg")
    with server:
        yield server


async def test_intake_accepts_while_the_broker_is_frozen_and_the_leads_flow_when_it_answers_again(
    migrated_database_url: str, embedded_broker: EmbeddedBroker, topic_prefix: str, mail_sink: MailSink
) -> None:
    await asyncio.to_thread(embedded_broker.start)  # idempotent; another test may have stopped it
    embedded_broker.resume()
    await apply_examples(migrated_database_url)
    common = (migrated_database_url, embedded_broker.bootstrap_servers, topic_prefix)
    scheduler = make_settings(SchedulerSettings, *common)
    dispatcher = make_settings(DispatcherSettings, *common, smtp_url=smtp_url_of(mail_sink))
    addresses = [f"frozen{i}@example.com" for i in range(10)]

    async with (
        running_intake(*common) as intake,
        running(run_scheduler, scheduler),
        running(run_dispatcher, dispatcher),
    ):
        first = await intake.http.post("/v1/leads", json=lead("before@example.com"))
        assert first.status_code == 202
        await mail_sink.wait_for_messages_async(1)  # the pipeline is up: groups formed, topics exist

        embedded_broker.pause()
        try:
            answers = [await intake.http.post("/v1/leads", json=lead(a)) for a in addresses]
            assert [a.status_code for a in answers] == [202] * len(addresses)
            # Stored and waiting in the outbox; nothing got through to the scheduler.
            [held] = await fetch_all(
                migrated_database_url,
                "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL AND topic LIKE %s",
                "%leads.accepted",
            )
            assert held == {"n": len(addresses)}
            assert await recipients(mail_sink) == ["before@example.com"]
        finally:
            embedded_broker.resume()

        async with asyncio.timeout(60):
            await mail_sink.wait_for_messages_async(1 + len(addresses))
    assert await recipients(mail_sink) == sorted(["before@example.com", *addresses])


async def test_postgres_down_answers_503_and_every_service_recovers_without_a_restart(
    private_postgres: EmbeddedPostgres, kafka_bootstrap_servers: str, topic_prefix: str, mail_sink: MailSink
) -> None:
    database_url = private_postgres.create_database("outage")
    apply_migrations(database_url)
    await apply_examples(database_url)
    common = (database_url, kafka_bootstrap_servers, topic_prefix)
    scheduler = make_settings(SchedulerSettings, *common, db_connect_timeout_s=1.0)
    dispatcher = make_settings(DispatcherSettings, *common, smtp_url=smtp_url_of(mail_sink), db_connect_timeout_s=1.0)

    async with (
        running_intake(*common, db_connect_timeout_s=1.0) as intake,
        running(run_scheduler, scheduler),
        running(run_dispatcher, dispatcher),
    ):
        assert (await intake.http.post("/v1/leads", json=lead("before@example.com"))).status_code == 202
        await mail_sink.wait_for_messages_async(1)

        await asyncio.to_thread(private_postgres.stop)
        try:
            refused = await intake.http.post("/v1/leads", json=lead("during@example.com"))
            ready = await intake.http.get("/readyz")
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"].isdigit()
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert ready.status_code == 503
        finally:
            await asyncio.to_thread(private_postgres.start)

        # The same processes: intake's pool reconnects, the scheduler and dispatcher pick up again.
        async def accepted_after() -> bool:
            response = await intake.http.post("/v1/leads", json=lead("after@example.com"))
            assert response.status_code in (202, 503), response.text
            return response.status_code == 202

        await wait_until(accepted_after, timeout=30, what="intake to accept leads again")
        async with asyncio.timeout(60):
            await mail_sink.wait_for_messages_async(2)
        assert (await intake.http.get("/readyz")).status_code == 200

    assert await recipients(mail_sink) == ["after@example.com", "before@example.com"]
    [lead_count] = await fetch_all(database_url, "SELECT count(*) AS n FROM leads")
    assert lead_count == {"n": 2}  # the refused lead changed nothing
