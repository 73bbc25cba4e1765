"""The outbox relay's producer is idempotent where the broker supports it: Apache Kafka hands out a
producer id, Tansu refuses one (``KAFKA_IDEMPOTENT_PRODUCER=auto`` asks the broker at start)."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer

from devstack.apache_kafka import ApacheKafkaBroker
from proto.codec import decode_message, encode_message
from proto.messages import LeadAccepted
from services.common.bus import IdempotenceUnavailable, KafkaPublisher, ensure_topics
from services.common.clock import utcnow
from services.common.config import BusSettings
from services.common.idempotence import probe_idempotent_producer
from services.common.outbox import OutboxRow
from tests.support.platform import make_settings

pytestmark = pytest.mark.integration

SUPPORTS_IDEMPOTENCE = {"kafka": True, "tansu": False}


def _settings(bootstrap: str, prefix: str, mode: str) -> BusSettings:
    settings = make_settings(BusSettings, "postgresql://unused/x", bootstrap, prefix)
    return msgspec.structs.replace(settings, kafka_idempotent_producer=mode)


async def _published_and_read_back(publisher: KafkaPublisher, settings: BusSettings) -> list[uuid.UUID]:
    lead = uuid.uuid4()
    message = LeadAccepted(id=lead, occurred_at=utcnow(), lead_id=lead, source="website")
    row = OutboxRow(id=1, topic=settings.topic_leads_accepted, key=str(lead), payload=encode_message(message))
    await publisher.publish_batch([row])
    consumer = AIOKafkaConsumer(
        settings.topic_leads_accepted,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=10000)
    finally:
        await consumer.stop()
    return [decode_message(record.value).id for records in batches.values() for record in records]


async def test_probe_tells_which_broker_hands_out_producer_ids(broker_kind: str, broker_bootstrap_servers: str) -> None:
    probe = await probe_idempotent_producer(broker_bootstrap_servers, request_timeout_s=10)
    assert probe.supported is SUPPORTS_IDEMPOTENCE[broker_kind], probe.reason


async def test_auto_makes_the_producer_idempotent_exactly_where_the_broker_supports_it_and_publishes(
    broker_kind: str, broker_bootstrap_servers: str, topic_prefix: str
) -> None:
    settings = _settings(broker_bootstrap_servers, topic_prefix, "auto")
    await ensure_topics(settings)
    publisher = KafkaPublisher(settings)
    await publisher.start()
    try:
        assert publisher.idempotent is SUPPORTS_IDEMPOTENCE[broker_kind]
        assert len(await _published_and_read_back(publisher, settings)) == 1
    finally:
        await publisher.stop()


async def test_false_never_asks_for_a_producer_id(broker_bootstrap_servers: str, topic_prefix: str) -> None:
    settings = _settings(broker_bootstrap_servers, topic_prefix, "false")
    await ensure_topics(settings)
    publisher = KafkaPublisher(settings)
    await publisher.start()
    try:
        assert publisher.idempotent is False
        assert len(await _published_and_read_back(publisher, settings)) == 1
    finally:
        await publisher.stop()


async def test_true_on_a_broker_without_idempotence_fails_at_start_naming_the_setting(
    tansu_bootstrap_servers: str, topic_prefix: str
) -> None:
    # Tansu lists InitProducerId among its APIs but answers it with UnknownError.
    publisher = KafkaPublisher(_settings(tansu_bootstrap_servers, topic_prefix, "true"))
    with pytest.raises(IdempotenceUnavailable, match=r"KAFKA_IDEMPOTENT_PRODUCER=true .* UnknownError"):
        await publisher.start()
    await publisher.stop()


@pytest.mark.kafka
async def test_true_on_apache_kafka_starts_an_idempotent_producer(
    apache_kafka_broker: ApacheKafkaBroker, topic_prefix: str
) -> None:
    settings = _settings(apache_kafka_broker.bootstrap_servers, topic_prefix, "true")
    await ensure_topics(settings)
    publisher = KafkaPublisher(settings)
    await publisher.start()
    try:
        assert publisher.idempotent is True
        assert len(await _published_and_read_back(publisher, settings)) == 1
    finally:
        await publisher.stop()
