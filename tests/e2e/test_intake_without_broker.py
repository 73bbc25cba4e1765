"""Intake keeps accepting leads through a broker outage, even when its pod is restarted during it:
PostgreSQL is the system of record and the outbox holds the leads until the broker is back. Every
service runs as a real process, as in Kubernetes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from devstack.apache_kafka import ApacheKafkaBroker, KafkaNotInstalled
from devstack.embedded import EmbeddedBroker
from devstack.mailsink import MailSink
from tests.support.intake import bearer, create_api_client
from tests.support.platform import apply_examples, fetch_all, free_port, smtp_url_of
from tests.support.processes import service_env, service_processes, terminate_and_time, wait_for_status
from tests.support.services import BROKERS

pytestmark = pytest.mark.e2e

LEADS = 8


def lead(address: str) -> dict[str, object]:
    return {"email": address, "source": "website", "consent": {"marketing": True}}


async def recipients(sink: MailSink) -> list[str]:
    return sorted(m["To"].addresses[0].addr_spec for m in await asyncio.to_thread(sink.messages))


class Outage(Protocol):
    """A broker and how it goes down and comes back."""

    bootstrap_servers: str

    def down(self) -> None: ...
    def back(self) -> None: ...


class FrozenTansu:
    """Tansu frozen (SIGSTOP): every connection hangs until its timeout. Not killed: Tansu keeps everything
    in memory, and a kill of it is a different fault — a broker that lost its data, healed by `retry-failed`
    (tests/e2e/test_lost_broker_heals.py)."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker
        self.bootstrap_servers = broker.bootstrap_servers

    def down(self) -> None:
        self.broker.pause()

    def back(self) -> None:
        self.broker.resume()


class KilledApacheKafka:
    """Apache Kafka killed with SIGKILL (no clean shutdown) and started again on its log directory, as a
    crashed broker pod comes back on its volume."""

    def __init__(self, broker: ApacheKafkaBroker) -> None:
        self.broker = broker
        self.bootstrap_servers = broker.bootstrap_servers

    def down(self) -> None:
        self.broker.kill()

    def back(self) -> None:
        self.broker.start()


@pytest.fixture(params=BROKERS)
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    """``[tansu]``: the session's Tansu, frozen; ``[kafka]``: a private Apache Kafka, killed."""
    if request.param == "tansu":
        tansu: EmbeddedBroker = request.getfixturevalue("embedded_broker")
        tansu.start()  # idempotent; another test may have stopped it
        tansu.resume()
        try:
            yield FrozenTansu(tansu)
        finally:
            tansu.resume()
        return
    kafka = ApacheKafkaBroker(data_dir=tmp_path / "kafka")
    try:
        kafka.start()
    except KafkaNotInstalled as error:
        pytest.fail(f"{error} (the kafka suite needs it; it is never skipped)", pytrace=False)
    try:
        yield KilledApacheKafka(kafka)
    finally:
        kafka.stop()


async def test_intake_restarted_while_the_broker_is_down_accepts_leads_and_every_email_goes_out_when_it_is_back(
    migrated_database_url: str, outage: Outage, topic_prefix: str, mail_sink: MailSink, tmp_path: Path
) -> None:
    await apply_examples(migrated_database_url)
    _, key = await create_api_client(migrated_database_url, "outage", ["leads:write"])
    port = free_port()
    env = service_env(migrated_database_url, outage.bootstrap_servers, topic_prefix, SMTP_URL=smtp_url_of(mail_sink))
    intake_env = {**env, "HOST": "127.0.0.1", "PORT": str(port)}
    base = f"http://127.0.0.1:{port}"
    addresses = [f"outage{i}@example.com" for i in range(LEADS)]

    with service_processes(tmp_path) as processes:
        first_intake = processes.start("intake", intake_env)
        processes.start("scheduler", {**env, "HEALTH_PORT": str(free_port())})
        processes.start("dispatcher", {**env, "HEALTH_PORT": str(free_port())})
        await asyncio.to_thread(wait_for_status, f"{base}/readyz", 200)
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=bearer(key)) as http:
            assert (await http.post("/v1/leads", json=lead("before@example.com"))).status_code == 202
            async with asyncio.timeout(90):
                await mail_sink.wait_for_messages_async(1)  # the pipeline is up: groups formed, topics exist

            await asyncio.to_thread(outage.down)
            # The pod is restarted during the outage: the new one must start and take leads.
            assert await asyncio.to_thread(terminate_and_time, first_intake) < 20 + 5
            processes.start("intake", intake_env)
            await asyncio.to_thread(wait_for_status, f"{base}/readyz", 200, 60)

            answers = [await http.post("/v1/leads", json=lead(address)) for address in addresses]
            assert [answer.status_code for answer in answers] == [202] * LEADS
            [held] = await fetch_all(
                migrated_database_url,
                "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL AND topic = %s",
                f"{topic_prefix}leads.accepted",
            )
            assert held == {"n": LEADS}  # stored, waiting in the outbox for the broker

            await asyncio.to_thread(outage.back)
            try:
                async with asyncio.timeout(180):
                    await mail_sink.wait_for_messages_async(1 + LEADS)
            except TimeoutError:
                raise AssertionError(f"not every email arrived: {await _progress(migrated_database_url)}") from None

    assert await recipients(mail_sink) == sorted(["before@example.com", *addresses])


async def _progress(database_url: str) -> dict[str, object]:
    """Where the leads are, for a failure message: unpublished outbox rows, enrollments, messages."""
    outbox = await fetch_all(
        database_url, "SELECT topic, count(*) AS n FROM outbox WHERE published_at IS NULL GROUP BY topic"
    )
    enrollments = await fetch_all(database_url, "SELECT count(*) AS n FROM enrollments")
    messages = await fetch_all(database_url, "SELECT status, count(*) AS n FROM messages GROUP BY status")
    return {"unpublished": outbox, "enrollments": enrollments, "messages": messages}
