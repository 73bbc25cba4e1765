"""What every long-running service process shares: the pool, the topics, the outbox relay, and a
stop event set by SIGTERM/SIGINT so Kubernetes can stop a pod gracefully.

A service starts whatever is unreachable. PostgreSQL is the system of record: the pool connects in the
background and a request that needs it while it is down gets a 503. Kafka is the transport: the
topics are created and the relay's producer connected in the background, retrying with bounded
backoff until the broker answers — meanwhile intake accepts leads (the outbox keeps them) and the
workers report not ready. Stopping is bounded by ``SHUTDOWN_GRACE_S`` (:mod:`services.common.shutdown`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import psycopg_pool
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from services.common import metrics
from services.common.bus import KafkaPublisher, create_missing_topics
from services.common.config import BusSettings
from services.common.db import Connection, open_pool
from services.common.outbox import run_outbox_relay
from services.common.retry import retry_until_stopped
from services.common.shutdown import ShutdownClock, arm_exit_watchdog, note_stop_signal, within

log = logging.getLogger(__name__)

BROKER_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError)


@dataclass
class Runtime:
    pool: psycopg_pool.AsyncConnectionPool[Connection]
    stop: asyncio.Event
    # The broker link (topics, then the outbox relay when enabled): runs until ``stop``.
    relay: asyncio.Task[None] | None
    # Set once the topics exist: consumers join their groups after it.
    topics_ready: asyncio.Event = field(default_factory=asyncio.Event)
    shutdown: ShutdownClock = field(default_factory=lambda: ShutdownClock(20.0))

    @property
    def relay_failed(self) -> bool:
        return self.relay is not None and self.relay.done() and not self.stop.is_set()


def stop_on_signals(stop: asyncio.Event, shutdown: ShutdownClock | None = None) -> None:
    """Set ``stop`` on SIGTERM or SIGINT. With ``shutdown``, the process is also ended by a watchdog
    if it has not stopped a few seconds after the shutdown deadline (a process of its own only)."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        note_stop_signal()
        if shutdown is not None and not stop.is_set():
            arm_exit_watchdog(shutdown.deadline())
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)


@contextlib.asynccontextmanager
async def service_runtime(settings: BusSettings, *, handle_signals: bool = True) -> AsyncIterator[Runtime]:
    """Open the pool, and link to the broker in the background (topics, then the outbox relay when
    enabled), for the block's duration. Neither waits for its server: see the module docstring."""
    stop = asyncio.Event()
    shutdown = ShutdownClock(settings.shutdown_grace_s)
    if handle_signals:
        stop_on_signals(stop, shutdown)
    pool = await open_pool(settings, wait=False)
    topics_ready = asyncio.Event()
    link = asyncio.create_task(_link_to_broker(settings, pool, stop, topics_ready), name="broker-link")
    try:
        yield Runtime(
            pool=pool,
            stop=stop,
            relay=link if settings.relay_enabled else None,
            topics_ready=topics_ready,
            shutdown=shutdown,
        )
    finally:
        stop.set()
        deadline = shutdown.deadline()
        if not await within(link, deadline, "stop the outbox relay"):
            # Cancelled at the deadline: give its producer's close a moment to run.
            await within(asyncio.gather(link, return_exceptions=True), deadline, "cancel the outbox relay")
        await within(pool.close(timeout=1.0), deadline, "close the PostgreSQL pool")


async def _link_to_broker(
    settings: BusSettings,
    pool: psycopg_pool.AsyncConnectionPool[Connection],
    stop: asyncio.Event,
    topics_ready: asyncio.Event,
) -> None:
    """Create the topics, then (when enabled) connect the producer and run the outbox relay; each
    step retried with bounded backoff until the broker answers or the service stops."""
    where = f"Kafka at {settings.kafka_bootstrap_servers}"
    created = await retry_until_stopped(
        lambda: _topics_created(settings), stop=stop, retry_on=BROKER_ERRORS, what=where, on_failure=_unreachable
    )
    if not created:
        return
    topics_ready.set()
    if not settings.relay_enabled:
        metrics.KAFKA_REACHABLE.set(1)
        return
    publisher = await retry_until_stopped(
        lambda: _started_publisher(settings), stop=stop, retry_on=BROKER_ERRORS, what=where, on_failure=_unreachable
    )
    if publisher is None:
        return
    metrics.KAFKA_REACHABLE.set(1)
    try:
        await run_outbox_relay(
            settings,
            pool,
            publisher,
            batch_size=settings.outbox_batch_size,
            poll_interval_s=settings.outbox_poll_interval_s,
            stop=stop,
        )
    finally:
        # Unsent records are not lost (their rows stay unpublished); a flush to a dead broker would wait forever.
        await within(publisher.stop(), _soon(settings), "close the Kafka producer")


async def _topics_created(settings: BusSettings) -> bool:
    await create_missing_topics(settings)
    return True


async def _started_publisher(settings: BusSettings) -> KafkaPublisher:
    # A fresh publisher per attempt: a producer whose start failed is not started again.
    publisher = KafkaPublisher(settings)
    try:
        await publisher.start()
    except BaseException:
        await within(publisher.stop(), _soon(settings), "close the Kafka producer")
        raise
    return publisher


def _unreachable(error: BaseException) -> None:
    metrics.KAFKA_REACHABLE.set(0)
    metrics.OUTBOX_RELAY_FAILURES.inc()


def _soon(settings: BusSettings) -> float:
    """A deadline for closing a Kafka client: one request timeout from now."""
    return time.monotonic() + settings.kafka_request_timeout_s


async def supervise(stop: asyncio.Event, tasks: list[asyncio.Task[None]], shutdown: ShutdownClock) -> None:
    """Wait for ``stop``; if a loop dies first, stop the others and re-raise its error, so the process
    exits non-zero and Kubernetes restarts it instead of leaving a half-working pod. Loops still
    running at the shutdown deadline are cancelled."""
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    stopper.cancel()
    await within(asyncio.gather(*tasks, return_exceptions=True), shutdown.deadline(), "stop the service loops")
    for task in tasks:
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            raise error


def worker_ready(runtime: Runtime, consumer: AIOKafkaConsumer) -> bool:
    """A worker is ready when its consumer owns partitions and its outbox relay runs."""
    return bool(consumer.assignment()) and not runtime.relay_failed
