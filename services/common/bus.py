"""Kafka at the edge: topic creation, the producer behind the outbox relay, and how consumers are made.

The loop that consumes is :mod:`services.common.consumer`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from services.common.config import BusSettings
from services.common.idempotence import probe_idempotent_producer
from services.common.outbox import OutboxRow, PublishError
from services.common.retry import retry_async

log = logging.getLogger(__name__)


def all_topics(settings: BusSettings) -> list[str]:
    return [
        settings.topic_leads_accepted,
        settings.topic_email_dispatch,
        settings.topic_email_events,
        settings.topic_email_dlq,
        settings.topic_leads_suppressed,
        settings.topic_lifecycle_events,
    ]


async def create_missing_topics(settings: BusSettings) -> None:
    """Create the platform's topics that do not exist yet, with ``retention.ms`` from
    KAFKA_TOPIC_RETENTION_HOURS (one attempt, bounded by the request timeout); existing topics are left
    as they are. Raises KafkaError or OSError when the broker does not answer."""

    async def create() -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in all_topics(settings) if t not in existing]
            if missing:
                retention = {"retention.ms": str(int(settings.kafka_topic_retention_hours * 3_600_000))}
                await admin.create_topics(
                    [
                        NewTopic(
                            t, settings.kafka_partitions, settings.kafka_replication_factor, topic_configs=retention
                        )
                        for t in missing
                    ]
                )
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()

    try:
        await asyncio.wait_for(create(), timeout=settings.kafka_request_timeout_s * 2)
    except TimeoutError as error:
        raise KafkaTimeoutError(f"no answer from {settings.kafka_bootstrap_servers}") from error


async def ensure_topics(settings: BusSettings) -> None:
    """:func:`create_missing_topics`, retried a few times (for tools and tests; services retry until stopped)."""
    await retry_async(
        lambda: create_missing_topics(settings),
        retry_on=(KafkaError, OSError),
        attempts=10,
        max_delay_s=5.0,
        what="create topics",
    )


class IdempotenceUnavailable(Exception):
    """``KAFKA_IDEMPOTENT_PRODUCER=true`` but the broker refuses the idempotent producer."""


class KafkaPublisher:
    """An aiokafka producer that publishes outbox rows and waits for every acknowledgement.

    Idempotent (``enable_idempotence``: a batch resent after a lost acknowledgement is written once, in
    order) where the broker supports it: ``KAFKA_IDEMPOTENT_PRODUCER=auto`` asks the broker at start
    (:mod:`services.common.idempotence`), ``true`` insists, ``false`` never asks. Either way consumers
    deduplicate on the message id; idempotence only spares them the duplicates a producer retry makes.
    """

    def __init__(self, settings: BusSettings) -> None:
        self._settings = settings
        self._timeout_s = settings.kafka_request_timeout_s
        self._producer: AIOKafkaProducer | None = None
        # Whether the running producer is idempotent; None before start().
        self.idempotent: bool | None = None

    def _make_producer(self, idempotent: bool) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            acks="all",
            enable_idempotence=idempotent,
            request_timeout_ms=int(self._timeout_s * 1000),
            linger_ms=5,
        )

    async def _decide_idempotence(self) -> bool:
        mode = self._settings.kafka_idempotent_producer
        if mode == "false":
            return False
        probe = await probe_idempotent_producer(
            self._settings.kafka_bootstrap_servers, request_timeout_s=self._timeout_s
        )
        if mode == "true" and not probe.supported:
            raise IdempotenceUnavailable(
                f"KAFKA_IDEMPOTENT_PRODUCER=true but {self._settings.kafka_bootstrap_servers} refuses the "
                f"idempotent producer: {probe.reason}; set it to auto or false"
            )
        log.info("kafka producer %s: %s", "idempotent" if probe.supported else "not idempotent", probe.reason)
        return probe.supported

    async def start(self) -> None:
        async def start_once() -> None:
            idempotent = await self._decide_idempotence()
            producer = self._make_producer(idempotent)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer, self.idempotent = producer, idempotent

        await retry_async(
            start_once,
            retry_on=(KafkaError, OSError),
            attempts=10,
            max_delay_s=5.0,
            what="kafka producer",
        )

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish_batch(self, rows: Sequence[OutboxRow]) -> None:
        producer = self._producer
        if producer is None:
            raise PublishError("the kafka producer is not started")
        try:
            futures = [await producer.send(row.topic, value=row.payload, key=row.key.encode()) for row in rows]
            await asyncio.wait_for(asyncio.gather(*futures), timeout=self._timeout_s * 2)
        except (KafkaError, TimeoutError) as error:
            raise PublishError(repr(error)) from error


# How often a consumer refreshes the cluster's metadata (topics and partitions) on its own.
METADATA_MAX_AGE_MS = 10_000


def make_consumer(
    settings: BusSettings, topic: str | Sequence[str], group_id: str, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer of ``topic`` (or of several topics) that never auto-commits:
    :func:`services.common.consumer.consume` commits offsets after the effect."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "group_id": settings.kafka_group_prefix + group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "request_timeout_ms": int(settings.kafka_request_timeout_s * 1000) + 30000,
        "session_timeout_ms": int(settings.kafka_session_timeout_s * 1000),
        "heartbeat_interval_ms": max(100, int(settings.kafka_session_timeout_s * 1000 / 4)),
        "max_poll_records": 100,
        "fetch_max_wait_ms": max(1, int(settings.kafka_fetch_max_wait_s * 1000)),
        # A broker that lost its topics (a restart of an in-memory broker, a cluster rebuilt) gets them
        # again from the first relay that reconnects; the consumer sees them at its next metadata
        # refresh, which by default comes five minutes later.
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
        "client_id": f"healingwork-{group_id}",
    }
    options.update(overrides)
    topics = [topic] if isinstance(topic, str) else list(topic)
    return AIOKafkaConsumer(*topics, **options)
