"""``healingwork dispatcher``: consumes ``email.dispatch`` in batches and sends each message over SMTP.

The consumer is the entrypoint: fetch up to DISPATCH_BATCH_SIZE records, hand their message ids to
:meth:`Dispatcher.dispatch_batch` (which claims, sends concurrently over the SMTP pool and commits
each outcome), and commit the Kafka offsets only after the whole batch is recorded in PostgreSQL.

Graceful shutdown (SIGTERM): stop fetching, let the batch in flight finish for SHUTDOWN_GRACE_S,
then cancel it — messages not yet handed to SMTP are released (due again at once), the others end in
their recorded state — and leave its offsets uncommitted, so the next owner of the partition gets the
commands again and the idempotent claim sends only what was not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from functools import partial

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from proto.codec import decode_message
from proto.messages import EmailDispatch
from services.common import metrics
from services.common.bus import MAX_HANDLER_FAILURES, commit_offsets, make_consumer
from services.common.config import DispatcherSettings
from services.common.db import UNAVAILABLE_ERRORS
from services.common.health import serve_health
from services.common.retry import backoff_delay, retry_async
from services.common.runtime import Runtime, service_runtime, supervise, worker_ready
from services.dispatcher.dispatch import Dispatcher
from services.dispatcher.rate import SharedRateLimiter
from services.dispatcher.smtp import SmtpPool, SmtpTarget

log = logging.getLogger(__name__)

CONSUMER_GROUP = "healingwork-dispatcher"
NAME = "dispatcher"


async def run_dispatcher(settings: DispatcherSettings, *, handle_signals: bool = True) -> None:
    """Run until SIGTERM/SIGINT (or until the runtime's stop event is set)."""
    async with service_runtime(settings, handle_signals=handle_signals) as runtime:
        await serve_dispatcher(settings, runtime)


async def serve_dispatcher(settings: DispatcherSettings, runtime: Runtime) -> None:
    smtp = SmtpPool(
        SmtpTarget.from_url(settings.smtp_url),
        settings.smtp_timeout_s,
        size=settings.dispatch_concurrency,
        throttle_pause_s=settings.smtp_throttle_pause_s,
    )
    rate = SharedRateLimiter(runtime.pool, settings.smtp_rate_name, settings.smtp_rate_per_s)
    dispatcher = Dispatcher(settings, runtime.pool, smtp, rate)
    consumer = make_consumer(
        settings, settings.topic_email_dispatch, CONSUMER_GROUP, max_poll_records=settings.dispatch_batch_size
    )
    tasks = [asyncio.create_task(consume_dispatch_commands(consumer, dispatcher, settings, runtime.stop))]
    if settings.health_port:
        ready = partial(worker_ready, runtime, consumer)
        tasks.append(asyncio.create_task(serve_health(settings.health_port, ready, runtime.stop)))
    try:
        await supervise(runtime.stop, tasks)
    finally:
        await smtp.close()


def message_ids_of(records: list[bytes | None]) -> list[uuid.UUID]:
    """The message ids of the ``email.dispatch`` commands among ``records``; others are counted and skipped."""
    ids = []
    for value in records:
        try:
            message = decode_message(value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            metrics.CONSUMER_FAILURES.labels(NAME, "undecodable").inc()
            log.error("skipping a record that is not a valid message", extra={"consumer": NAME, "error": str(error)})
            continue
        metrics.CONSUMED.labels(NAME, str(message.__struct_config__.tag)).inc()
        if isinstance(message, EmailDispatch):
            ids.append(message.message_id)
    return ids


async def consume_dispatch_commands(
    consumer: AIOKafkaConsumer, dispatcher: Dispatcher, settings: DispatcherSettings, stop: asyncio.Event
) -> None:
    """Fetch, dispatch and commit batch after batch until ``stop`` is set (see the module docstring)."""
    await retry_async(consumer.start, retry_on=(KafkaError, OSError), attempts=10, max_delay_s=5.0, what=NAME)
    failures = 0
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=settings.dispatch_batch_size)
            if not batches:
                continue
            ids = message_ids_of([record.value for records in batches.values() for record in records])
            work = asyncio.create_task(dispatcher.dispatch_batch(ids))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not work.done():
                log.info("stopping: finishing the batch in flight", extra={"grace_s": settings.shutdown_grace_s})
                await asyncio.wait({work}, timeout=settings.shutdown_grace_s)
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                    return  # offsets stay uncommitted: the commands come back to the next owner
            error = work.exception()
            if error is None:
                failures = 0
                await _commit(consumer, {tp: records[-1].offset + 1 for tp, records in batches.items() if records})
                continue
            failures += 1
            if isinstance(error, UNAVAILABLE_ERRORS):
                metrics.CONSUMER_FAILURES.labels(NAME, "database").inc()
                log.warning("database unavailable; will retry the batch", extra={"error": repr(error)})
            elif failures >= MAX_HANDLER_FAILURES:
                # Blocking the partitions forever would stop every later email; the reconcile job finds
                # the messages still queued and re-publishes them.
                metrics.CONSUMER_FAILURES.labels(NAME, "handler").inc()
                log.error("batch keeps failing; skipping it", exc_info=error)
                failures = 0
                await _commit(consumer, {tp: records[-1].offset + 1 for tp, records in batches.items() if records})
                continue
            else:
                log.error("batch failed; will retry it", exc_info=error)
            for tp, records in batches.items():
                if records:
                    consumer.seek(tp, records[0].offset)
            await asyncio.sleep(backoff_delay(min(failures, 6), 0.5, 10.0))
    finally:
        await consumer.stop()


async def _commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    await commit_offsets(consumer, offsets, name=NAME)
