"""The consumer loop against a real broker: offsets follow effects, outages never skip a record."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from proto.codec import encode_message
from proto.messages import AnyMessage, LeadAccepted
from services.common.bus import ensure_topics, make_consumer, run_consumer
from services.common.clock import utcnow
from services.common.config import BusSettings
from tests.support.platform import make_settings

pytestmark = pytest.mark.integration


async def _produce(settings: BusSettings, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_idempotence=False)
    await producer.start()
    try:
        for value in values:
            # One key: one partition, so the order of handling is the order of producing.
            await producer.send_and_wait(settings.topic_leads_accepted, value, key=b"same")
    finally:
        await producer.stop()


def _lead_message() -> LeadAccepted:
    lead = uuid.uuid4()
    return LeadAccepted(id=lead, occurred_at=utcnow(), lead_id=lead, source="website")


async def test_outage_retries_the_record_and_undecodable_records_are_skipped(
    broker_bootstrap_servers: str, topic_prefix: str
) -> None:
    settings = make_settings(BusSettings, "postgresql://unused/x", broker_bootstrap_servers, topic_prefix)
    await ensure_topics(settings)
    messages = [_lead_message() for _ in range(3)]
    await _produce(settings, [encode_message(messages[0]), b"not json", *(encode_message(m) for m in messages[1:])])

    handled: list[uuid.UUID] = []
    outages_left = 2
    stop = asyncio.Event()

    async def handler(message: AnyMessage) -> None:
        nonlocal outages_left
        if message.id == messages[1].id and outages_left:
            outages_left -= 1
            raise psycopg.OperationalError("the database went away")
        handled.append(message.id)
        if len(handled) == len(messages):
            stop.set()

    group = f"{topic_prefix}group"
    consumer = make_consumer(settings, settings.topic_leads_accepted, group)
    await asyncio.wait_for(run_consumer(consumer, handler, stop=stop, name="test"), timeout=60)

    assert handled == [m.id for m in messages]
    # The committed position is past every record: a restart would not re-handle them.
    check = make_consumer(settings, settings.topic_leads_accepted, group)
    await check.start()
    try:
        partitions = check.partitions_for_topic(settings.topic_leads_accepted) or set()
        committed = [await check.committed(TopicPartition(settings.topic_leads_accepted, p)) for p in partitions]
    finally:
        await check.stop()
    assert sum(c or 0 for c in committed) == 4
