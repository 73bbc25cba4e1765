"""``healingwork scheduler``: consumes ``leads.accepted`` to enroll leads, and emits due steps.

Two loops share one process: the consumer (an entrypoint, run by the one consumer loop: decode, enroll
a fetch's leads in one transaction, commit the offsets) and the ticker, which claims due enrollments
every poll interval or as soon as the consumer enrolled someone.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import psycopg_pool

from proto.messages import AnyMessage, LeadAccepted
from services.common.bus import make_consumer
from services.common.config import SchedulerSettings
from services.common.consumer import BatchHandler, consume
from services.common.db import UNAVAILABLE_ERRORS, Connection, transaction
from services.common.health import HealthServer
from services.common.runtime import Runtime, service_runtime, supervise, worker_ready
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_leads
from services.scheduler.suppression_consumer import consume_suppressions

log = logging.getLogger(__name__)

CONSUMER_GROUP = "healingwork-scheduler"


async def run_scheduler(settings: SchedulerSettings, *, handle_signals: bool = True) -> None:
    """Run until SIGTERM/SIGINT (or until the runtime's stop event is set)."""
    # Bound first: a port that is taken is a start-up failure, before anything else started.
    health = await HealthServer.bind(settings.health_port) if settings.health_port else None
    async with service_runtime(settings, handle_signals=handle_signals) as runtime:
        await serve_scheduler(settings, runtime, health)


async def serve_scheduler(settings: SchedulerSettings, runtime: Runtime, health: HealthServer | None = None) -> None:
    due = asyncio.Event()
    consumer = make_consumer(settings, settings.topic_leads_accepted, CONSUMER_GROUP)
    tasks = [
        asyncio.create_task(
            consume(
                consumer,
                enroll_accepted_leads(runtime.pool, due, settings.topic_lifecycle_events),
                stop=runtime.stop,
                name="scheduler",
                shutdown=runtime.shutdown,
                topics_ready=runtime.topics_ready,
            )
        ),
        asyncio.create_task(_tick(settings, runtime, due)),
        asyncio.create_task(consume_suppressions(settings, runtime)),
    ]
    if health is not None:
        health.is_ready = partial(worker_ready, runtime, consumer)
        tasks.append(asyncio.create_task(health.serve(runtime.stop)))
    await supervise(runtime.stop, tasks, runtime.shutdown)


def enroll_accepted_leads(
    pool: psycopg_pool.AsyncConnectionPool[Connection], due: asyncio.Event, lifecycle_topic: str
) -> BatchHandler:
    """Enroll the leads of a fetch's ``lead.accepted`` records in one transaction and one
    :func:`enroll_leads` call (a few statements per fetch, whatever its size: a transaction, or
    statements, per record cost more than the enrollment itself), announcing each new enrollment on
    ``lifecycle_topic``; sets ``due`` when anyone was enrolled. A lead that fails the batch is found by
    the consumer loop, which then hands the records over one at a time (a record is one lead)."""

    async def handle(messages: list[AnyMessage]) -> None:
        leads = [message.lead_id for message in messages if isinstance(message, LeadAccepted)]
        if not leads:
            return
        async with transaction(pool) as conn:
            enrolled = await enroll_leads(conn, leads, lifecycle_topic=lifecycle_topic)
        if any(enrolled.values()):
            due.set()

    return handle


async def _tick(settings: SchedulerSettings, runtime: Runtime, due: asyncio.Event) -> None:
    while not runtime.stop.is_set():
        due.clear()
        try:
            while True:
                async with transaction(runtime.pool) as conn:
                    emitted = await emit_due_steps(
                        conn,
                        limit=settings.scheduler_batch_size,
                        topic=settings.topic_email_dispatch,
                        lifecycle_topic=settings.topic_lifecycle_events,
                    )
                if len(emitted) < settings.scheduler_batch_size:
                    break
        except UNAVAILABLE_ERRORS as error:
            log.warning("database unavailable; the ticker will try again", extra={"error": repr(error)})
        waits = [asyncio.create_task(due.wait()), asyncio.create_task(runtime.stop.wait())]
        await asyncio.wait(waits, timeout=settings.scheduler_poll_interval_s, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waits:
            waiter.cancel()
