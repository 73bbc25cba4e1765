"""What every long-running service process shares: the pool, the topics, the outbox relay, and a
stop event set by SIGTERM/SIGINT so Kubernetes can stop a pod gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg_pool
from aiokafka import AIOKafkaConsumer

from services.common.bus import KafkaPublisher, ensure_topics
from services.common.config import BusSettings
from services.common.db import Connection, open_pool
from services.common.outbox import run_outbox_relay

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    pool: psycopg_pool.AsyncConnectionPool[Connection]
    stop: asyncio.Event
    relay: asyncio.Task[None] | None

    @property
    def relay_failed(self) -> bool:
        return self.relay is not None and self.relay.done()


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT (a second signal is left to the default handler's fate)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


@contextlib.asynccontextmanager
async def service_runtime(settings: BusSettings, *, handle_signals: bool = True) -> AsyncIterator[Runtime]:
    """Open the pool, create the topics and run the outbox relay (when enabled) for the block's duration."""
    stop = asyncio.Event()
    if handle_signals:
        stop_on_signals(stop)
    pool = await open_pool(settings, wait=False)
    publisher: KafkaPublisher | None = None
    relay: asyncio.Task[None] | None = None
    try:
        await ensure_topics(settings)
        if settings.relay_enabled:
            publisher = KafkaPublisher(settings)
            await publisher.start()
            relay = asyncio.create_task(
                run_outbox_relay(
                    settings,
                    pool,
                    publisher,
                    batch_size=settings.outbox_batch_size,
                    poll_interval_s=settings.outbox_poll_interval_s,
                    stop=stop,
                ),
                name="outbox-relay",
            )
        yield Runtime(pool=pool, stop=stop, relay=relay)
    finally:
        stop.set()
        if relay is not None:
            await asyncio.gather(relay, return_exceptions=True)
        if publisher is not None:
            await publisher.stop()
        await pool.close()


async def supervise(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Wait for ``stop``; if a loop dies first, stop the others and re-raise its error, so the process
    exits non-zero and Kubernetes restarts it instead of leaving a half-working pod."""
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result


def worker_ready(runtime: Runtime, consumer: AIOKafkaConsumer) -> bool:
    """A worker is ready when its consumer owns partitions and its outbox relay runs."""
    return bool(consumer.assignment()) and not runtime.relay_failed
