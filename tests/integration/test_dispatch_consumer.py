"""The dispatcher's consumer loop against a real broker: two batches in flight, offsets committed in
fetch order and only after their batch, a failed batch fetched again with everything after it.

The Dispatcher is replaced by a stand-in that records the message ids it is handed (and can be told
to fail): what is under test is the loop between Kafka and ``dispatch_batch``, not the sending."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import cast

import psycopg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from proto.codec import encode_message
from proto.messages import EmailDispatch
from services.common.bus import ensure_topics, make_consumer
from services.common.clock import utcnow
from services.common.config import DispatcherSettings
from services.dispatcher.dispatch import Dispatcher
from services.dispatcher.service import CONSUMER_GROUP, consume_dispatch_commands
from tests.support.platform import make_settings

pytestmark = pytest.mark.integration

COMMANDS = 60


class StandInDispatcher:
    """Takes its time over each batch; the first ``failures`` batches fail as if PostgreSQL were down."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.handed: Counter[uuid.UUID] = Counter()
        self.batches = 0

    async def dispatch_batch(self, message_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        self.batches += 1
        await asyncio.sleep(0.05)
        if self.failures:
            self.failures -= 1
            raise psycopg.OperationalError("the database went away")
        self.handed.update(message_ids)
        return dict.fromkeys(message_ids, "sent")


async def _produce(settings: DispatcherSettings) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(COMMANDS)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_idempotence=False)
    await producer.start()
    try:
        for message_id in ids:  # keys spread the commands over both partitions
            command = EmailDispatch(
                id=message_id, occurred_at=utcnow(), message_id=message_id, enrollment_id=message_id, lead_id=message_id
            )
            await producer.send(settings.topic_email_dispatch, encode_message(command), key=message_id.bytes)
        await producer.flush()
    finally:
        await producer.stop()
    return ids


async def _committed(settings: DispatcherSettings) -> int:
    check = make_consumer(settings, settings.topic_email_dispatch, CONSUMER_GROUP)
    await check.start()
    try:
        partitions = check.partitions_for_topic(settings.topic_email_dispatch) or set()
        committed = [await check.committed(TopicPartition(settings.topic_email_dispatch, p)) for p in partitions]
        return sum(offset or 0 for offset in committed)
    finally:
        await check.stop()


@pytest.mark.parametrize("failures", [0, 3])
async def test_every_command_is_handed_over_and_committed_even_when_batches_fail(
    broker_bootstrap_servers: str, topic_prefix: str, failures: int
) -> None:
    settings = make_settings(
        DispatcherSettings,
        "postgresql://unused/x",
        broker_bootstrap_servers,
        topic_prefix,
        kafka_group_prefix=topic_prefix,
        dispatch_batch_size=7,  # many small batches, so two are often in flight
    )
    await ensure_topics(settings)
    ids = await _produce(settings)
    dispatcher = StandInDispatcher(failures)
    stop = asyncio.Event()
    consumer = make_consumer(
        settings, settings.topic_email_dispatch, CONSUMER_GROUP, max_poll_records=settings.dispatch_batch_size
    )
    loop = asyncio.create_task(consume_dispatch_commands(consumer, cast(Dispatcher, dispatcher), settings, stop))

    async def all_handed() -> None:
        while set(dispatcher.handed) != set(ids):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(all_handed(), timeout=60)
    stop.set()
    await asyncio.wait_for(loop, timeout=30)

    # Every batch that ended was committed, in order: a restart would hand over nothing again.
    assert await _committed(settings) == COMMANDS
    assert dispatcher.batches >= COMMANDS // settings.dispatch_batch_size + failures
    if failures == 0:
        assert max(dispatcher.handed.values()) == 1  # nothing rewound, nothing handed twice
