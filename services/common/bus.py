"""Kafka at the edge: the producer behind the outbox relay, topic creation, and the consumer loop.

The consumer loop is the one place that turns Kafka records into calls of a handler: it decodes, runs
the handler inside a PostgreSQL transaction, and commits offsets only after that transaction committed.
Handlers are idempotent on the message id, so a redelivery after a crash changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from proto.codec import decode_message
from proto.messages import AnyMessage
from services.common import metrics
from services.common.config import BusSettings
from services.common.db import UNAVAILABLE_ERRORS
from services.common.idempotence import probe_idempotent_producer
from services.common.outbox import OutboxRow, PublishError
from services.common.retry import backoff_delay, retry_async

log = logging.getLogger(__name__)

# A handler owns its transactions (the dispatcher needs two around its SMTP call); it must be
# idempotent on the message id.
Handler = Callable[[AnyMessage], Awaitable[None]]

# A record whose handler raises (not a dependency outage) this many times in a row is skipped.
MAX_HANDLER_FAILURES = 5


def all_topics(settings: BusSettings) -> list[str]:
    return [
        settings.topic_leads_accepted,
        settings.topic_email_dispatch,
        settings.topic_email_events,
        settings.topic_email_dlq,
        settings.topic_leads_suppressed,
    ]


async def ensure_topics(settings: BusSettings) -> None:
    """Create the platform's topics with the configured partition count; existing topics are left as they are."""

    async def create() -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
        )
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in all_topics(settings) if t not in existing]
            if missing:
                await admin.create_topics(
                    [NewTopic(t, settings.kafka_partitions, settings.kafka_replication_factor) for t in missing]
                )
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()

    await retry_async(create, retry_on=(KafkaError, OSError), attempts=10, max_delay_s=5.0, what="create topics")


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


# How long one offset commit may take before the consumer gives up on it and goes on consuming.
COMMIT_TIMEOUT_S = 10.0


def make_consumer(settings: BusSettings, topic: str, group_id: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: offsets are committed by :func:`run_consumer` after the effect."""
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
        "client_id": f"healingwork-{group_id}",
    }
    options.update(overrides)
    return AIOKafkaConsumer(topic, **options)


async def run_consumer(
    consumer: AIOKafkaConsumer,
    handler: Handler,
    *,
    stop: asyncio.Event,
    name: str,
    commit_timeout_s: float = COMMIT_TIMEOUT_S,
) -> None:
    """Consume until ``stop`` is set. Offsets are committed only after the handler returned, that is
    after its effects were committed in PostgreSQL. A record that cannot be decoded is logged and
    counted and skipped (it can never succeed); a database outage pauses the partition at that record
    and retries it, so nothing is skipped because a dependency was down."""
    await retry_async(consumer.start, retry_on=(KafkaError, OSError), attempts=10, max_delay_s=5.0, what=name)
    outages = 0
    bug_failures: dict[tuple[TopicPartition, int], int] = {}
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            processed: dict[TopicPartition, int] = {}
            any_failed = False
            for partition, records in batches.items():
                failed = False
                for record in records:
                    try:
                        await _handle_record(handler, record.value, name)
                    except UNAVAILABLE_ERRORS as error:
                        outages += 1
                        metrics.CONSUMER_FAILURES.labels(name, "database").inc()
                        log.warning(
                            "database unavailable; will retry the record",
                            extra={"consumer": name, "offset": record.offset, "error": repr(error)},
                        )
                        failed = True
                    except Exception:
                        position = (partition, record.offset)
                        bug_failures[position] = bug_failures.get(position, 0) + 1
                        if bug_failures[position] < MAX_HANDLER_FAILURES:
                            log.exception("handler failed; will retry the record", extra={"consumer": name})
                            failed = True
                        else:
                            # Blocking the partition forever would stop every later lead; the reconcile
                            # jobs find the effect that is missing and re-publish it.
                            metrics.CONSUMER_FAILURES.labels(name, "handler").inc()
                            log.exception("handler keeps failing; skipping the record", extra={"consumer": name})
                            del bug_failures[position]
                    if failed:
                        # Rewind this partition to the record; the other partitions go on.
                        consumer.seek(partition, record.offset)
                        any_failed = True
                        break
                    processed[partition] = record.offset + 1
            if processed:
                await commit_offsets(consumer, processed, name=name, timeout_s=commit_timeout_s)
            if any_failed:
                await asyncio.sleep(backoff_delay(min(outages, 6), 0.5, 10.0))
            else:
                outages = 0
    finally:
        await consumer.stop()


async def commit_offsets(
    consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], *, name: str, timeout_s: float = COMMIT_TIMEOUT_S
) -> bool:
    """Commit ``offsets`` (the effects of the records are already committed in PostgreSQL); returns
    whether it worked. A failure is logged and counted, never raised: a redelivery is a no-op.

    aiokafka retries a retriable commit error forever; after a broker lost its topics and groups
    (UnknownTopicOrPartition) that stalled scheduler and dispatcher for good. So the commit is bounded,
    and a failed one makes the consumer join its group again with fresh metadata."""
    try:
        await asyncio.wait_for(consumer.commit(offsets), timeout=timeout_s)
    except (KafkaError, TimeoutError) as error:
        metrics.CONSUMER_FAILURES.labels(name, "commit").inc()
        log.warning("offset commit failed; joining the group again", extra={"consumer": name, "error": repr(error)})
        topics = consumer.subscription()
        if topics:
            consumer.unsubscribe()
            consumer.subscribe(topics=list(topics))
        return False
    return True


async def _handle_record(handler: Handler, value: bytes | None, name: str) -> None:
    try:
        message = decode_message(value or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        metrics.CONSUMER_FAILURES.labels(name, "undecodable").inc()
        log.error("skipping a record that is not a valid message", extra={"consumer": name, "error": str(error)})
        return
    await handler(message)
    metrics.CONSUMED.labels(name, str(message.__struct_config__.tag)).inc()
