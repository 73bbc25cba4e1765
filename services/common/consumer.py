"""The one consumer loop: Kafka records in, a handler's effects committed in PostgreSQL, offsets out.

Every consumer of the platform (the scheduler's two, the dispatcher's) runs through :func:`consume`,
so they share one set of rules:

* **Commit after effect.** Records are fetched in batches and handed to the handler as decoded
  messages; a batch's offsets are committed only after its handler returned (its effects are committed
  in PostgreSQL), in fetch order: a batch is committed only when it and every batch fetched before it
  ended. Up to ``batches_in_flight`` batches run at once (the dispatcher starts the next batch while
  the previous one finishes its slowest sends). Handlers are idempotent on the message id, so a record
  handed over again after a crash or a rewind changes nothing.
* **Undecodable records** are counted (``undecodable``) and skipped: they can never succeed.
* **A dependency outage** (PostgreSQL unreachable: ``UNAVAILABLE_ERRORS``) rewinds the failed batch and
  every batch fetched after it, and fetches them again after a backoff — forever: nothing is skipped
  because a dependency was down.
* **Any other error** (a bug, unexpected data) rewinds the same way, and the failed batch's partitions
  are then handled one record at a time until past it, so a poisoned record cannot take the others
  with it. A record that fails ``MAX_HANDLER_FAILURES`` times in a row is counted (``handler``) and
  skipped; the reconcile jobs find the effect that is missing and re-publish it.
* **Bounded commits** (:func:`commit_offsets`): a commit that fails or hangs is given up, counted
  (``commit``) and the consumer joins its group again; the records may come again, harmlessly.
* **Start-up** waits until the topics exist and the broker answers, retrying until stopped.
* **Shutdown**: no fetch after ``stop``; batches in flight may finish until the drain deadline, then
  they are cancelled and left uncommitted (the next owner of the partition gets them again); the
  consumer is closed by the shutdown deadline, whatever is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from proto.codec import decode_message
from proto.messages import AnyMessage
from services.common import metrics
from services.common.db import UNAVAILABLE_ERRORS
from services.common.retry import backoff_delay, retry_until_stopped
from services.common.shutdown import ShutdownClock, seconds_until, within

log = logging.getLogger(__name__)

# A batch handler owns its transactions (the dispatcher needs two around its SMTP call); it must be
# idempotent on the message ids.
BatchHandler = Callable[[list[AnyMessage]], Awaitable[object]]
Handler = Callable[[AnyMessage], Awaitable[None]]

# A record whose handler raises (not a dependency outage) this many times in a row is skipped.
MAX_HANDLER_FAILURES = 5
# How long one offset commit may take before the consumer gives up on it and goes on consuming.
COMMIT_TIMEOUT_S = 10.0
# How long a fetch waits for records when nothing is in flight, and while a batch is in flight (then
# the loop looks at the batch again).
FETCH_IDLE_MS = 500
FETCH_WHILE_BUSY_MS = 20
# Backoff after a failed batch: from RETRY_BASE_S, doubling, at most RETRY_MAX_S.
RETRY_BASE_S = 0.5
RETRY_MAX_S = 10.0


def one_at_a_time(handler: Handler) -> BatchHandler:
    """A batch handler that hands the messages to a per-message ``handler`` in order."""

    async def handle(messages: list[AnyMessage]) -> None:
        for message in messages:
            await handler(message)

    return handle


@dataclass
class _Batch:
    work: asyncio.Task[object]
    first: dict[TopicPartition, int]  # the first offset of each partition, to rewind to
    next: dict[TopicPartition, int]  # the offset to commit once this batch and all before it ended
    records: int
    types: Counter[str]

    @property
    def position(self) -> tuple[TopicPartition, int]:
        """Where the batch starts (for a one-record batch: the record)."""
        return min(self.first.items(), key=lambda item: (item[0].topic, item[0].partition))

    def error(self) -> BaseException | None:
        return None if not self.work.done() or self.work.cancelled() else self.work.exception()


async def consume(
    consumer: AIOKafkaConsumer,
    handle: BatchHandler,
    *,
    stop: asyncio.Event,
    name: str,
    shutdown: ShutdownClock,
    topics_ready: asyncio.Event | None = None,
    max_records: int | None = None,
    batches_in_flight: int = 1,
    commit_timeout_s: float = COMMIT_TIMEOUT_S,
) -> None:
    """Consume until ``stop`` is set, by the rules of the module docstring. ``max_records`` bounds a
    batch (default: the consumer's ``max_poll_records``); ``topics_ready``, when given, is awaited
    before the consumer joins its group."""
    if topics_ready is not None and not await _wait_or_stop(topics_ready, stop):
        await within(consumer.stop(), shutdown.deadline(), f"{name}: close the Kafka consumer")
        return
    started = await retry_until_stopped(
        _started(consumer), stop=stop, retry_on=(KafkaError, OSError), what=f"Kafka ({name} consumer)"
    )
    if not started:
        await within(consumer.stop(), shutdown.deadline(), f"{name}: close the Kafka consumer")
        return
    loop = _Loop(consumer, handle, name, max_records, batches_in_flight, commit_timeout_s)
    try:
        await loop.run(stop)
    finally:
        try:
            await loop.finish(shutdown)
        finally:
            await within(consumer.stop(), shutdown.deadline(), f"{name}: close the Kafka consumer")


def _started(consumer: AIOKafkaConsumer) -> Callable[[], Awaitable[bool]]:
    async def start() -> bool:
        await consumer.start()
        return True

    return start


class _Loop:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handle: BatchHandler,
        name: str,
        max_records: int | None,
        batches_in_flight: int,
        commit_timeout_s: float,
    ) -> None:
        self.consumer = consumer
        self.handle = handle
        self.name = name
        self.max_records = max_records
        self.batches_in_flight = max(1, batches_in_flight)
        self.commit_timeout_s = commit_timeout_s
        self.in_flight: deque[_Batch] = deque()
        self.failures = 0  # consecutive failed batches, for the backoff
        self.record_failures: dict[tuple[TopicPartition, int], int] = {}
        # Partitions handled one record at a time until this offset (after a batch failed on a bug).
        self.isolating: dict[TopicPartition, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            limit = 1 if self.isolating else self.batches_in_flight
            if len(self.in_flight) < limit:
                records = await self._fetch()
                if records and not stop.is_set():  # fetched while stopping: they go to the next owner
                    self.in_flight.append(self._start(records))
            else:
                await _wait_or_stop(self.in_flight[0].work, stop)
            while self.in_flight and self.in_flight[0].work.done():
                batch = self.in_flight.popleft()
                error = batch.error()
                if error is None:
                    self.failures = 0
                    await self._ended(batch)
                    continue
                if self._skip(batch, error):
                    await self._ended(batch, handled=False)
                    continue
                await self._rewind(batch, stop)
                await _sleep_or_stop(stop, backoff_delay(self.failures, RETRY_BASE_S, RETRY_MAX_S))
                break

    async def _fetch(self) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        timeout_ms = FETCH_WHILE_BUSY_MS if self.in_flight else FETCH_IDLE_MS
        if self.isolating:
            assigned = self.consumer.assignment()
            for partition in [tp for tp in self.isolating if tp not in assigned]:
                del self.isolating[partition]  # moved to another member in a rebalance
        if self.isolating:
            fetched = await self.consumer.getmany(*self.isolating, timeout_ms=timeout_ms, max_records=1)
        else:
            fetched = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=self.max_records)
        return {tp: records for tp, records in fetched.items() if records}

    def _start(self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> _Batch:
        messages = []
        for partition_records in records.values():
            for record in partition_records:
                message = _decoded(record.value, self.name)
                if message is not None:
                    messages.append(message)
        return _Batch(
            work=asyncio.create_task(self._handled(messages)),
            first={tp: rs[0].offset for tp, rs in records.items()},
            next={tp: rs[-1].offset + 1 for tp, rs in records.items()},
            records=sum(len(rs) for rs in records.values()),
            types=Counter(str(m.__struct_config__.tag) for m in messages),
        )

    async def _handled(self, messages: list[AnyMessage]) -> object:
        return await self.handle(messages) if messages else None

    async def _ended(self, batch: _Batch, *, handled: bool = True) -> None:
        """The batch's effects are done (or it was skipped): commit it and note the progress."""
        if handled:
            for kind, count in batch.types.items():
                metrics.CONSUMED.labels(self.name, kind).inc(count)
        await commit_offsets(self.consumer, batch.next, name=self.name, timeout_s=self.commit_timeout_s)
        for partition, offset in batch.next.items():
            if self.isolating.get(partition, offset) <= offset:
                self.isolating.pop(partition, None)

    def _skip(self, batch: _Batch, error: BaseException) -> bool:
        """Count the failure; whether the batch is given up (a record that keeps failing on a bug)."""
        self.failures += 1
        if isinstance(error, UNAVAILABLE_ERRORS):
            metrics.CONSUMER_FAILURES.labels(self.name, "database").inc()
            log.warning(
                "database unavailable; will retry the batch", extra={"consumer": self.name, "error": repr(error)}
            )
            return False
        if batch.records > 1:
            log.error("batch failed; handling its records one at a time", extra={"consumer": self.name}, exc_info=error)
            for partition, offset in batch.next.items():
                self.isolating[partition] = max(self.isolating.get(partition, 0), offset)
            return False
        position = batch.position
        self.record_failures[position] = self.record_failures.get(position, 0) + 1
        if self.record_failures[position] < MAX_HANDLER_FAILURES:
            log.error("handler failed; will retry the record", extra={"consumer": self.name}, exc_info=error)
            return False
        del self.record_failures[position]
        metrics.CONSUMER_FAILURES.labels(self.name, "handler").inc()
        log.error(
            "handler keeps failing; skipping the record",
            extra={"consumer": self.name, "partition": position[0].partition, "offset": position[1]},
            exc_info=error,
        )
        self.failures = 0
        return True

    async def _rewind(self, failed: _Batch, stop: asyncio.Event) -> None:
        """Let the later batches end, then fetch again from ``failed``'s records and theirs (a later
        batch may hold partitions the failed one did not; none of it is committed)."""
        later = list(self.in_flight)
        self.in_flight.clear()
        if later:
            works = [batch.work for batch in later]
            if not await _wait_or_stop(asyncio.gather(*works, return_exceptions=True), stop):
                for work in works:
                    work.cancel()
        rewind_to: dict[TopicPartition, int] = {}
        for batch in (failed, *later):  # in fetch order: the first offset seen per partition is the lowest
            for partition, offset in batch.first.items():
                rewind_to.setdefault(partition, offset)
        assigned = self.consumer.assignment()
        for partition, offset in rewind_to.items():
            if partition in assigned:  # a partition moved away in a rebalance starts at its committed offset
                self.consumer.seek(partition, offset)

    async def finish(self, shutdown: ShutdownClock) -> None:
        """Stopping: give the batches in flight until the drain deadline, cancel what still runs, and
        commit those that ended, in order (the rest come back to the next owner of their partitions)."""
        if not self.in_flight:
            return
        drain = shutdown.drain_deadline()
        seconds = round(drain - time.monotonic(), 1)
        log.info(
            "stopping: finishing the batches in flight",
            extra={"consumer": self.name, "batches": len(self.in_flight), "seconds": seconds},
        )
        works = {batch.work for batch in self.in_flight}
        await asyncio.wait(works, timeout=seconds_until(drain))
        for work in works:
            work.cancel()
        await within(asyncio.gather(*works, return_exceptions=True), drain, f"{self.name}: cancel the batches")
        deadline = shutdown.deadline()
        while self.in_flight and self.in_flight[0].work.done() and self.in_flight[0].error() is None:
            if self.in_flight[0].work.cancelled():
                break
            batch = self.in_flight.popleft()
            timeout = min(self.commit_timeout_s, seconds_until(deadline))
            await commit_offsets(self.consumer, batch.next, name=self.name, timeout_s=timeout)


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


def _decoded(value: bytes | None, name: str) -> AnyMessage | None:
    try:
        return decode_message(value or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        metrics.CONSUMER_FAILURES.labels(name, "undecodable").inc()
        log.error("skipping a record that is not a valid message", extra={"consumer": name, "error": str(error)})
        return None


async def _wait_or_stop(awaitable: Awaitable[object] | asyncio.Event, stop: asyncio.Event) -> bool:
    """Wait for ``awaitable`` (or an event) until ``stop`` is set; returns whether it ended first."""
    work = asyncio.ensure_future(awaitable.wait() if isinstance(awaitable, asyncio.Event) else awaitable)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if isinstance(awaitable, asyncio.Event) and not work.done():
        work.cancel()
    return work.done()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
