"""``healingwork dispatcher``: consumes ``email.dispatch`` in batches and sends each message over SMTP.

The consumer is the entrypoint: fetch up to DISPATCH_BATCH_SIZE records, hand their message ids to
:meth:`Dispatcher.dispatch_batch` (which claims, sends concurrently over the SMTP pool and commits
each outcome), and commit the Kafka offsets only after the whole batch is recorded in PostgreSQL.
The next batch is fetched and started while one is finishing (two at most), and offsets are committed
in fetch order, so a command never waits for a whole earlier batch before it is read.

Graceful shutdown (SIGTERM): stop fetching, let the batch in flight finish for SHUTDOWN_GRACE_S,
then cancel it — messages not yet handed to SMTP are released (due again at once), the others end in
their recorded state — and leave its offsets uncommitted, so the next owner of the partition gets the
commands again and the idempotent claim sends only what was not sent.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from dataclasses import dataclass
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


# Batches dispatched at once: the next batch is fetched and started while the previous one finishes
# (its slowest sends), so a command never waits for a whole batch before it is even read.
BATCHES_IN_FLIGHT = 2
# How long a fetch waits for records while a batch is in flight (then the loop looks at the batch).
FETCH_WHILE_BUSY_MS = 20


@dataclass
class _Batch:
    work: asyncio.Task[dict[uuid.UUID, str]]
    first: dict[TopicPartition, int]  # the first offset of each partition, to rewind to
    next: dict[TopicPartition, int]  # the offset to commit once this batch and all before it are done


async def consume_dispatch_commands(
    consumer: AIOKafkaConsumer, dispatcher: Dispatcher, settings: DispatcherSettings, stop: asyncio.Event
) -> None:
    """Fetch, dispatch and commit until ``stop`` is set (see the module docstring). Up to
    BATCHES_IN_FLIGHT batches run at once; offsets are committed in fetch order, each only after its
    batch and every earlier one were recorded. A failed batch rewinds its partitions (later batches'
    records come again too: the claim makes the repeat a no-op)."""
    await retry_async(consumer.start, retry_on=(KafkaError, OSError), attempts=10, max_delay_s=5.0, what=NAME)
    in_flight: deque[_Batch] = deque()
    failures = 0
    try:
        while not stop.is_set():
            if len(in_flight) < BATCHES_IN_FLIGHT:
                batches = await consumer.getmany(
                    timeout_ms=FETCH_WHILE_BUSY_MS if in_flight else 500, max_records=settings.dispatch_batch_size
                )
                records = {tp: r for tp, r in batches.items() if r}
                if records and not stop.is_set():  # fetched while stopping: they go to the next owner
                    ids = message_ids_of([record.value for rs in records.values() for record in rs])
                    in_flight.append(
                        _Batch(
                            asyncio.create_task(dispatcher.dispatch_batch(ids)),
                            {tp: rs[0].offset for tp, rs in records.items()},
                            {tp: rs[-1].offset + 1 for tp, rs in records.items()},
                        )
                    )
            else:
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({in_flight[0].work, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
            while in_flight and in_flight[0].work.done():
                batch = in_flight.popleft()
                error = batch.work.exception()
                if error is None:
                    failures = 0
                    await _commit(consumer, batch.next)
                    continue
                failures += 1
                if not isinstance(error, UNAVAILABLE_ERRORS) and failures >= MAX_HANDLER_FAILURES:
                    # Blocking the partitions forever would stop every later email; the reconcile job
                    # finds the messages still queued and re-publishes them.
                    metrics.CONSUMER_FAILURES.labels(NAME, "handler").inc()
                    log.error("batch keeps failing; skipping it", exc_info=error)
                    failures = 0
                    await _commit(consumer, batch.next)
                    continue
                await _rewind(consumer, batch, in_flight, error, failures)
                break
    finally:
        try:
            await _finish_in_flight(consumer, in_flight, settings.shutdown_grace_s)
        finally:
            await consumer.stop()


async def _rewind(
    consumer: AIOKafkaConsumer, failed: _Batch, in_flight: deque[_Batch], error: BaseException, failures: int
) -> None:
    """After ``failed`` failed: let the later batches end, then fetch again from ``failed``'s records
    and theirs (a later batch may hold partitions the failed one did not; none of it is committed)."""
    if isinstance(error, UNAVAILABLE_ERRORS):
        metrics.CONSUMER_FAILURES.labels(NAME, "database").inc()
        log.warning("database unavailable; will retry the batch", extra={"error": repr(error)})
    else:
        log.error("batch failed; will retry it", exc_info=error)
    later = list(in_flight)
    in_flight.clear()
    await asyncio.gather(*(batch.work for batch in later), return_exceptions=True)
    rewind_to: dict[TopicPartition, int] = {}
    for batch in (failed, *later):  # in fetch order: the first offset seen per partition is the lowest
        for tp, offset in batch.first.items():
            rewind_to.setdefault(tp, offset)
    for tp, offset in rewind_to.items():
        consumer.seek(tp, offset)
    await asyncio.sleep(backoff_delay(min(failures, 6), 0.5, 10.0))


async def _finish_in_flight(consumer: AIOKafkaConsumer, in_flight: deque[_Batch], grace_s: float) -> None:
    """Stopping: give the batches in flight SHUTDOWN_GRACE_S to end, then cancel them (messages not yet
    handed to SMTP stay queued), and commit the offsets of those that ended, in order."""
    if not in_flight:
        return
    log.info("stopping: finishing the batches in flight", extra={"grace_s": grace_s, "batches": len(in_flight)})
    await asyncio.wait({batch.work for batch in in_flight}, timeout=grace_s)
    for batch in in_flight:
        batch.work.cancel()
    await asyncio.gather(*(batch.work for batch in in_flight), return_exceptions=True)
    while in_flight and not in_flight[0].work.cancelled() and in_flight[0].work.exception() is None:
        await _commit(consumer, in_flight.popleft().next)
    # The rest come back to the next owner of their partitions; the claim sends only what was not sent.


async def _commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    await commit_offsets(consumer, offsets, name=NAME)
