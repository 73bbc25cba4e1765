"""The one consumer loop (services.common.consumer) against a real broker: offsets follow effects,
outages never skip a record, a poisoned record is skipped alone, and a stop is bounded."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from proto.codec import encode_message
from proto.messages import AnyMessage, LeadAccepted
from services.common import metrics
from services.common.bus import ensure_topics, make_consumer
from services.common.clock import utcnow
from services.common.config import BusSettings
from services.common.consumer import MAX_HANDLER_FAILURES, consume, one_at_a_time
from services.common.shutdown import ShutdownClock
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


async def _committed(settings: BusSettings, group: str) -> int:
    check = make_consumer(settings, settings.topic_leads_accepted, group)
    await check.start()
    try:
        partitions = check.partitions_for_topic(settings.topic_leads_accepted) or set()
        committed = [await check.committed(TopicPartition(settings.topic_leads_accepted, p)) for p in partitions]
    finally:
        await check.stop()
    return sum(c or 0 for c in committed)


@pytest.fixture
async def settings(broker_bootstrap_servers: str, topic_prefix: str) -> BusSettings:
    settings = make_settings(BusSettings, "postgresql://unused/x", broker_bootstrap_servers, topic_prefix)
    await ensure_topics(settings)
    return settings


async def test_outage_retries_the_record_and_undecodable_records_are_skipped(
    settings: BusSettings, topic_prefix: str
) -> None:
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
        if set(handled) == {m.id for m in messages}:
            stop.set()

    group = f"{topic_prefix}group"
    consumer = make_consumer(settings, settings.topic_leads_accepted, group)
    run = consume(consumer, one_at_a_time(handler), stop=stop, name="test", shutdown=ShutdownClock(5.0))
    await asyncio.wait_for(run, timeout=60)

    # Every message, in order; a rewound batch hands its earlier messages again (handlers are idempotent).
    assert list(dict.fromkeys(handled)) == [m.id for m in messages]
    assert outages_left == 0
    # The committed position is past every record: a restart would not re-handle them.
    assert await _committed(settings, group) == 4


async def test_a_record_that_keeps_failing_is_skipped_alone_and_the_rest_of_its_batch_is_handled(
    settings: BusSettings, topic_prefix: str
) -> None:
    messages = [_lead_message() for _ in range(5)]
    poisoned = messages[2].id
    await _produce(settings, [encode_message(m) for m in messages])
    attempts_on_poisoned = 0
    handled: set[uuid.UUID] = set()
    stop = asyncio.Event()
    skipped_before = metrics.CONSUMER_FAILURES.labels("poison", "handler")._value.get()

    async def handler(message: AnyMessage) -> None:
        nonlocal attempts_on_poisoned
        if message.id == poisoned:
            attempts_on_poisoned += 1
            raise ValueError("a bug that this record always triggers")
        handled.add(message.id)
        if handled == {m.id for m in messages} - {poisoned}:
            stop.set()

    group = f"{topic_prefix}poison"
    consumer = make_consumer(settings, settings.topic_leads_accepted, group)
    run = consume(consumer, one_at_a_time(handler), stop=stop, name="poison", shutdown=ShutdownClock(5.0))
    await asyncio.wait_for(run, timeout=90)

    assert handled == {m.id for m in messages} - {poisoned}
    # Once in the whole batch, then MAX_HANDLER_FAILURES times on its own before it is skipped.
    assert attempts_on_poisoned == 1 + MAX_HANDLER_FAILURES
    assert metrics.CONSUMER_FAILURES.labels("poison", "handler")._value.get() == skipped_before + 1
    assert await _committed(settings, group) == len(messages)


async def test_a_stop_cancels_the_batch_in_flight_at_the_drain_deadline_and_leaves_it_uncommitted(
    settings: BusSettings, topic_prefix: str
) -> None:
    await _produce(settings, [encode_message(_lead_message()) for _ in range(3)])
    started = asyncio.Event()
    cancelled = asyncio.Event()
    stop = asyncio.Event()

    async def never_ends(messages: list[AnyMessage]) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    group = f"{topic_prefix}slow"
    consumer = make_consumer(settings, settings.topic_leads_accepted, group)
    run = asyncio.create_task(consume(consumer, never_ends, stop=stop, name="slow", shutdown=ShutdownClock(2.0)))
    await asyncio.wait_for(started.wait(), timeout=60)
    stopped_at = time.monotonic()
    stop.set()
    await asyncio.wait_for(run, timeout=30)

    assert cancelled.is_set()
    assert time.monotonic() - stopped_at < 2.0 + 1.0  # the grace, and a little for the last steps
    assert await _committed(settings, group) == 0  # the next owner gets the records again


async def test_a_consumer_whose_broker_never_answers_stops_when_told(topic_prefix: str) -> None:
    from tests.support.platform import free_port

    settings = make_settings(BusSettings, "postgresql://unused/x", f"127.0.0.1:{free_port()}", topic_prefix)
    stop = asyncio.Event()
    consumer = make_consumer(settings, settings.topic_leads_accepted, f"{topic_prefix}nobroker")
    run = asyncio.create_task(
        consume(consumer, one_at_a_time(_never_called), stop=stop, name="nobroker", shutdown=ShutdownClock(2.0))
    )
    await asyncio.sleep(1.5)  # long enough for a few failed attempts to join
    assert not run.done()
    stop.set()
    await asyncio.wait_for(run, timeout=5)


async def _never_called(message: AnyMessage) -> None:
    raise AssertionError("no record can arrive without a broker")
