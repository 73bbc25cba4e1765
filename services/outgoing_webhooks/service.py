"""``healingwork webhooks``: fans the platform's events out to the registered endpoints and delivers them.

Three loops share one process: the consumer (the one consumer loop, over the topics of
:func:`services.common.webhook_events.webhook_source_topics`: map a fetch's messages, insert their
deliveries in one transaction, commit the offsets) and the deliverer, which claims due deliveries
every poll interval or as soon as the consumer queued some, sends them concurrently and records the
outcomes in groups (one transaction per group), and the reconcile pass, which fans out again what the
outbox published (the backstop for events a broker lost before they were consumed). All keep their
state in PostgreSQL only, so any number of replicas share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from functools import partial

import psycopg_pool

from proto.messages import AnyMessage
from services.common import metrics
from services.common.bus import make_consumer
from services.common.clock import database_now
from services.common.config import WebhooksSettings
from services.common.consumer import BatchHandler, consume
from services.common.db import UNAVAILABLE_ERRORS, Connection, transaction
from services.common.health import HealthServer
from services.common.runtime import Runtime, service_runtime, supervise, worker_ready
from services.common.webhook_events import webhook_event_of, webhook_source_topics
from services.outgoing_webhooks.deliverer import DeliveryRules, deliver_due
from services.outgoing_webhooks.delivery import (
    delivery_backlog,
    reencrypt_secrets,
)
from services.outgoing_webhooks.fanout import fan_out
from services.outgoing_webhooks.reconcile import Windows, relay_lag
from services.outgoing_webhooks.safe_http import Resolver, SafeHttpClient, system_resolver

log = logging.getLogger(__name__)

CONSUMER_GROUP = "healingwork-webhooks"


async def run_webhooks(settings: WebhooksSettings, *, handle_signals: bool = True) -> None:
    """Run until SIGTERM/SIGINT (or until the runtime's stop event is set)."""
    health = await HealthServer.bind(settings.health_port) if settings.health_port else None
    async with service_runtime(settings, handle_signals=handle_signals) as runtime:
        await serve_webhooks(settings, runtime, health)


async def serve_webhooks(
    settings: WebhooksSettings,
    runtime: Runtime,
    health: HealthServer | None = None,
    *,
    resolver: Resolver = system_resolver,
) -> None:
    """The consumer, the deliverer and the reconcile pass until ``runtime.stop``; ``resolver``
    resolves endpoint names."""
    queued = asyncio.Event()
    consumer = make_consumer(settings, webhook_source_topics(settings), CONSUMER_GROUP)
    client = SafeHttpClient(
        allow_private_networks=settings.webhook_allow_private_networks,
        timeout_s=settings.webhook_timeout_s,
        resolver=resolver,
    )
    async with client:
        tasks = [
            asyncio.create_task(
                consume(
                    consumer,
                    queue_deliveries(runtime.pool, queued),
                    stop=runtime.stop,
                    name="webhooks",
                    shutdown=runtime.shutdown,
                    topics_ready=runtime.topics_ready,
                )
            ),
            asyncio.create_task(_deliver(settings, runtime, client, queued)),
            asyncio.create_task(_reconcile(settings, runtime, queued)),
        ]
        if health is not None:
            health.is_ready = partial(worker_ready, runtime, consumer)
            tasks.append(asyncio.create_task(health.serve(runtime.stop)))
        await supervise(runtime.stop, tasks, runtime.shutdown)


def queue_deliveries(pool: psycopg_pool.AsyncConnectionPool[Connection], queued: asyncio.Event) -> BatchHandler:
    """Fan a fetch's messages out into deliveries in one transaction; sets ``queued`` when any is new."""

    async def handle(messages: list[AnyMessage]) -> None:
        events = [event for message in messages if (event := webhook_event_of(message)) is not None]
        if not events:
            return
        async with transaction(pool) as conn:
            new = await fan_out(conn, events)
        if new:
            queued.set()

    return handle


async def _deliver(settings: WebhooksSettings, runtime: Runtime, client: SafeHttpClient, queued: asyncio.Event) -> None:
    rules = DeliveryRules.of(settings)
    await _reencrypt_after_rotation(settings, runtime)
    while not runtime.stop.is_set():
        queued.clear()
        claimed = 0
        try:
            claimed = await deliver_due(runtime.pool, client, rules)
            await _observe_backlog(runtime)
        except UNAVAILABLE_ERRORS as error:
            log.warning("database unavailable; the deliverer will try again", extra={"error": repr(error)})
        if claimed >= rules.batch_size:
            continue
        waits = [asyncio.create_task(queued.wait()), asyncio.create_task(runtime.stop.wait())]
        await asyncio.wait(waits, timeout=settings.webhook_poll_interval_s, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waits:
            waiter.cancel()


RECONCILE_BATCH = 5000


async def _reconcile(settings: WebhooksSettings, runtime: Runtime, queued: asyncio.Event) -> None:
    """Fan out again, every interval, the events the outbox published (see ``reconcile``): what a
    broker lost before this service consumed it is delivered all the same."""
    topics = webhook_source_topics(settings)
    windows = Windows(lag=relay_lag(settings), lookback=timedelta(seconds=settings.webhook_reconcile_lookback_s))
    while not runtime.stop.is_set():
        full = False
        try:
            async with transaction(runtime.pool) as conn:
                new, full = await windows.reconcile(conn, topics, now=await database_now(conn), limit=RECONCILE_BATCH)
            if new:
                metrics.OUTGOING_WEBHOOK_RECONCILED.inc(new)
                log.info("reconcile found events the consumer had not", extra={"deliveries": new})
                queued.set()
        except UNAVAILABLE_ERRORS as error:
            log.warning("database unavailable; the reconcile pass will try again", extra={"error": repr(error)})
        if full:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.stop.wait(), timeout=settings.webhook_reconcile_interval_s)


async def _reencrypt_after_rotation(settings: WebhooksSettings, runtime: Runtime) -> None:
    """Once per start (a rotation of HMAC_SECRET restarts the pods): secrets still encrypted under the
    previous key are encrypted under the current one."""
    try:
        async with transaction(runtime.pool) as conn:
            renewed = await reencrypt_secrets(
                conn, hmac_secret=settings.hmac_secret, hmac_secret_previous=settings.hmac_secret_previous
            )
    except UNAVAILABLE_ERRORS as error:
        log.warning("could not re-encrypt webhook secrets; next start", extra={"error": repr(error)})
        return
    if renewed:
        log.info("webhook secrets encrypted under the current HMAC_SECRET", extra={"endpoints": renewed})


async def _observe_backlog(runtime: Runtime) -> None:
    async with runtime.pool.connection() as conn:
        backlog = await delivery_backlog(conn)
    metrics.OUTGOING_WEBHOOK_BACKLOG.clear()
    metrics.OUTGOING_WEBHOOK_OLDEST_AGE.clear()
    for endpoint, pending, age in backlog:
        metrics.OUTGOING_WEBHOOK_BACKLOG.labels(str(endpoint)).set(pending)
        metrics.OUTGOING_WEBHOOK_OLDEST_AGE.labels(str(endpoint)).set(age)
