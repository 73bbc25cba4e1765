"""The transactional outbox: write a message in the same transaction as the change it announces,
and a relay that publishes committed rows to Kafka and marks them published.

Nothing is published that was not committed (the row only exists after commit) and nothing committed is
left unpublished (the relay claims rows by state until each one is acknowledged by the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import psycopg_pool
from psycopg import sql

from proto.codec import encode_message
from proto.messages import Message
from services.common import metrics
from services.common.config import DatabaseSettings
from services.common.db import LOCAL_BACKEND_PIDS, UNAVAILABLE_ERRORS, Connection, connect, transaction
from services.common.retry import backoff_delay

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "healingwork_outbox"
# How long a woken relay waits for more commits before its pass, and how often it refreshes the
# backlog gauges (a query of its own).
WAKEUP_COALESCE_S = 0.005
BACKLOG_OBSERVE_INTERVAL_S = 5.0
# A failed relay pass waits with jittered exponential backoff from the poll interval up to this.
RELAY_MAX_BACKOFF_S = 10.0


async def enqueue_message(conn: Connection, topic: str, key: str, message: Message) -> None:
    """Add ``message`` to the outbox inside the caller's transaction, and wake the relays on commit."""
    await enqueue_messages(conn, [(topic, key, message)])


# Wakes the relays when the transaction commits (a wake-up only: lost on rollback; the relay also
# polls). For statements that write outbox rows themselves (see services.common.events).
WAKE_RELAYS = sql.SQL("pg_notify({}, '')").format(sql.Literal(NOTIFY_CHANNEL))

_ENQUEUE = (
    sql.SQL(
        """WITH queued AS (
           INSERT INTO outbox (topic, key, payload)
           SELECT m.topic, m.key, m.payload
           FROM unnest(%s::text[], %s::text[], %s::bytea[]) WITH ORDINALITY AS m(topic, key, payload, n)
           ORDER BY m.n)
       SELECT {wake}"""
    )
    .format(wake=WAKE_RELAYS)
    .as_string()
)


async def enqueue_messages(conn: Connection, messages: Sequence[tuple[str, str, Message]]) -> None:
    """:func:`enqueue_message` for a batch of ``(topic, key, message)``: one statement with its wake-up."""
    if not messages:
        return
    await conn.execute(
        _ENQUEUE,
        (
            [topic for topic, _, _ in messages],
            [key for _, key, _ in messages],
            [encode_message(message) for _, _, message in messages],
        ),
    )


class PublishError(Exception):
    """The broker did not acknowledge every message of a batch."""


# Failures after which a relay pass is simply tried again later.
RELAY_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, PublishError)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    key: str
    payload: bytes


class Publisher(Protocol):
    """What the relay needs from a Kafka producer: publish a batch, raise if any message failed."""

    async def publish_batch(self, rows: Sequence[OutboxRow]) -> None: ...


async def publish_pending_outbox(
    pool: psycopg_pool.AsyncConnectionPool[Connection], publisher: Publisher, batch_size: int
) -> int:
    """Claim up to ``batch_size`` unpublished rows, publish them, mark them published; returns the count.

    Rows are locked with SKIP LOCKED, so any number of relays can run side by side. If publishing fails
    the transaction rolls back and the rows stay unpublished for the next pass.
    """
    async with transaction(pool) as conn:
        # Marked published and read in one statement; if publishing fails, the rollback unmarks them.
        cursor = await conn.execute(
            """UPDATE outbox SET published_at = now(), attempts = attempts + 1
               WHERE id IN (SELECT id FROM outbox
                            WHERE published_at IS NULL
                            ORDER BY id
                            LIMIT %s
                            FOR UPDATE SKIP LOCKED)
               RETURNING id, topic, key, payload""",
            (batch_size,),
        )
        rows = sorted(
            (
                OutboxRow(int(r["id"]), str(r["topic"]), str(r["key"]), bytes(r["payload"]))  # type: ignore[call-overload]
                for r in await cursor.fetchall()
            ),
            key=lambda row: row.id,
        )
        if not rows:
            return 0
        await publisher.publish_batch(rows)
    metrics.OUTBOX_PUBLISHED.inc(len(rows))
    return len(rows)


async def run_outbox_relay(
    settings: DatabaseSettings,
    pool: psycopg_pool.AsyncConnectionPool[Connection],
    publisher: Publisher,
    *,
    batch_size: int,
    poll_interval_s: float,
    stop: asyncio.Event,
) -> None:
    """Publish the outbox until ``stop`` is set: drain on every NOTIFY, and at least every poll interval."""
    wakeup = asyncio.Event()
    listener = asyncio.create_task(_listen_for_wakeups(settings, wakeup, stop), name="outbox-listener")
    failures = 0
    backlog_observed_at = 0.0
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            if wakeup.is_set():
                # Under load every commit sends a NOTIFY; a short pause lets one pass publish the rows
                # of many commits instead of a pass (and a round trip) per commit.
                await _sleep_or_stop(stop, WAKEUP_COALESCE_S)
            wakeup.clear()
            try:
                while await publish_pending_outbox(pool, publisher, batch_size) == batch_size and not stop.is_set():
                    pass
                failures = 0
                metrics.KAFKA_REACHABLE.set(1)
            except RELAY_ERRORS as error:
                failures += 1
                metrics.OUTBOX_RELAY_FAILURES.inc()
                if isinstance(error, PublishError):
                    metrics.KAFKA_REACHABLE.set(0)
                log.warning("outbox relay pass failed", extra={"error": repr(error), "failures": failures})
                await _sleep_or_stop(stop, backoff_delay(failures + 1, poll_interval_s, RELAY_MAX_BACKOFF_S))
                continue
            if loop.time() - backlog_observed_at >= BACKLOG_OBSERVE_INTERVAL_S:
                backlog_observed_at = loop.time()
                await metrics.observe_outbox_backlog(pool)
            waiter = asyncio.create_task(wakeup.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, timeout=poll_interval_s, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def _listen_for_wakeups(settings: DatabaseSettings, wakeup: asyncio.Event, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            conn = await connect(settings)
            async with conn:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                async for notify in conn.notifies():
                    # Another process's rows are its own relay's job (or the next poll's, if it has none).
                    if notify.pid in LOCAL_BACKEND_PIDS:
                        wakeup.set()
        except UNAVAILABLE_ERRORS as error:
            log.info("outbox listener reconnecting", extra={"error": repr(error)})
            await _sleep_or_stop(stop, 2.0)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
