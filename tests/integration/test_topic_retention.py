"""The platform creates its topics with the configured retention: the bound on how long anything about
an erased person stays in Kafka after it was published (docs/security.md)."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.common.bus import all_topics, ensure_topics
from services.common.config import BusSettings
from tests.support.platform import make_settings

pytestmark = pytest.mark.integration


async def test_created_topics_carry_the_configured_retention(broker_bootstrap_servers: str, topic_prefix: str) -> None:
    settings = make_settings(
        BusSettings, "postgresql://unused/x", broker_bootstrap_servers, topic_prefix, kafka_topic_retention_hours=2.0
    )

    await ensure_topics(settings)

    admin = AIOKafkaAdminClient(bootstrap_servers=broker_bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in all_topics(settings)]
        )
    finally:
        await admin.close()
    retention = {
        resource[3]: {entry[0]: entry[1] for entry in resource[4]}.get("retention.ms")
        for response in responses
        for resource in response.resources
    }
    assert retention == dict.fromkeys(all_topics(settings), "7200000")
