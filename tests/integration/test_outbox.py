from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer

from proto.codec import decode_message
from proto.messages import AnyMessage, LeadAccepted
from services.common.bus import KafkaPublisher, ensure_topics
from services.common.clock import utcnow
from services.common.config import BusSettings
from services.common.db import connect, open_pool, transaction
from services.common.outbox import NOTIFY_CHANNEL, enqueue_message, publish_pending_outbox, run_outbox_relay
from tests.support.platform import fetch_all, make_settings, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(migrated_database_url: str, broker_bootstrap_servers: str, topic_prefix: str) -> BusSettings:
    settings = make_settings(
        BusSettings, migrated_database_url, broker_bootstrap_servers, topic_prefix, db_pool_max_size=6
    )
    await ensure_topics(settings)
    return settings


@pytest.fixture
async def publisher(settings: BusSettings) -> AsyncIterator[KafkaPublisher]:
    publisher = KafkaPublisher(settings)
    await publisher.start()
    yield publisher
    await publisher.stop()


def _message() -> LeadAccepted:
    lead = uuid.uuid4()
    return LeadAccepted(id=lead, occurred_at=utcnow(), lead_id=lead, source="website")


async def _consume(settings: BusSettings, count: int) -> list[AnyMessage]:
    """Read ``count`` messages of the test's topic from the beginning, then wait a moment for extras."""
    consumer = AIOKafkaConsumer(
        settings.topic_leads_accepted,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    received: list[AnyMessage] = []
    try:
        async with asyncio.timeout(30):
            while len(received) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    received.extend(decode_message(r.value) for r in records)
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            received.extend(decode_message(r.value) for r in records)
    finally:
        await consumer.stop()
    return received


async def test_rolled_back_message_is_never_published(settings: BusSettings, publisher: KafkaPublisher) -> None:
    pool = await open_pool(settings)
    try:
        async with transaction(pool) as conn:
            await enqueue_message(conn, settings.topic_leads_accepted, "k", _message())
            raise psycopg.Rollback()  # the change failed; the transaction rolls back
        assert await publish_pending_outbox(pool, publisher, 100) == 0
    finally:
        await pool.close()
    assert await fetch_all(settings.database_url, "SELECT id FROM outbox") == []


async def test_row_committed_late_with_a_lower_id_is_still_published(
    settings: BusSettings, publisher: KafkaPublisher
) -> None:
    """The trap of polling by 'id > last seen': a slow transaction takes the lower id, a fast one the
    higher id and commits first. Claiming by state publishes both."""
    pool = await open_pool(settings)
    slow = await connect(settings)
    late, early = _message(), _message()
    try:
        await slow.set_autocommit(False)
        await enqueue_message(slow, settings.topic_leads_accepted, "slow", late)
        async with transaction(pool) as conn:
            await enqueue_message(conn, settings.topic_leads_accepted, "fast", early)

        assert await publish_pending_outbox(pool, publisher, 100) == 1
        await slow.commit()
        assert await publish_pending_outbox(pool, publisher, 100) == 1
    finally:
        await slow.close()
        await pool.close()

    rows = await fetch_all(
        settings.database_url, "SELECT key, published_at IS NOT NULL AS sent FROM outbox ORDER BY id"
    )
    assert rows == [{"key": "slow", "sent": True}, {"key": "fast", "sent": True}]
    assert {m.id for m in await _consume(settings, 2)} == {late.id, early.id}


async def test_concurrent_relays_publish_each_row_once(settings: BusSettings, publisher: KafkaPublisher) -> None:
    pool = await open_pool(settings)
    messages = [_message() for _ in range(300)]
    try:
        async with transaction(pool) as conn:
            for message in messages:
                await enqueue_message(conn, settings.topic_leads_accepted, str(message.lead_id), message)

        async def relay() -> int:
            total = 0
            while published := await publish_pending_outbox(pool, publisher, 25):
                total += published
            return total

        counts = await asyncio.gather(*(relay() for _ in range(4)))
    finally:
        await pool.close()

    assert sum(counts) == 300
    received = [m.id for m in await _consume(settings, 300)]
    assert sorted(received) == sorted(m.id for m in messages)


async def test_relay_marks_rows_published_only_after_the_broker_acknowledged(
    settings: BusSettings, publisher: KafkaPublisher
) -> None:
    pool = await open_pool(settings)
    messages = [_message() for _ in range(5)]
    try:
        async with transaction(pool) as conn:
            for message in messages:
                await enqueue_message(conn, settings.topic_leads_accepted, str(message.lead_id), message)
        assert await publish_pending_outbox(pool, publisher, 100) == 5
    finally:
        await pool.close()

    assert {m.id for m in await _consume(settings, 5)} == {m.id for m in messages}
    pending = await fetch_all(settings.database_url, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
    assert pending == [{"n": 0}]


async def test_relay_wakes_for_its_own_process_commits_and_leaves_others_to_polling(
    settings: BusSettings, publisher: KafkaPublisher
) -> None:
    """With a one-minute poll only a NOTIFY can wake the relay quickly: its own pool's commit does; a
    commit from another process (here a connection outside the pool, as a job's would be) does not."""
    pool = await open_pool(settings)
    stop = asyncio.Event()
    relay = asyncio.create_task(
        run_outbox_relay(settings, pool, publisher, batch_size=100, poll_interval_s=60.0, stop=stop)
    )
    foreign = await connect(settings)

    async def listening() -> bool:
        rows = await fetch_all(
            settings.database_url,
            "SELECT 1 FROM pg_stat_activity WHERE query = %s AND datname = current_database()",
            f"LISTEN {NOTIFY_CHANNEL}",
        )
        return bool(rows)

    async def published(key: str) -> bool:
        rows = await fetch_all(
            settings.database_url, "SELECT published_at IS NOT NULL AS sent FROM outbox WHERE key = %s", key
        )
        return bool(rows) and bool(rows[0]["sent"])

    try:
        await wait_until(listening, timeout=10, what="the relay listening")
        await enqueue_message(foreign, settings.topic_leads_accepted, "foreign", _message())  # autocommit
        await asyncio.sleep(1.0)  # a woken relay publishes within milliseconds; nothing to await instead
        assert not await published("foreign")

        async with transaction(pool) as conn:
            await enqueue_message(conn, settings.topic_leads_accepted, "own", _message())
        await wait_until(lambda: published("own"), timeout=10, what="the own row published on NOTIFY")
        assert await published("foreign")  # a pass publishes every pending row, whoever wrote it
    finally:
        stop.set()
        await relay
        await foreign.close()
        await pool.close()
