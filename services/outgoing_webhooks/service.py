"""``healingwork webhooks``: fans the platform's events out to the registered endpoints and delivers them.

Three loops share one process: the consumer (the one consumer loop, over the topics of
:func:`services.common.webhook_events.webhook_source_topics`: map a fetch's messages, insert their
deliveries in one transaction, commit the offsets) and the deliverer, which claims due deliveries
every poll interval or as soon as the consumer queued some, sends them concurrently and records each
outcome, and the reconcile pass, which fans out again what the outbox published (the backstop for
events a broker lost before they were consumed). All keep their state in PostgreSQL only, so any
number of replicas share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
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
from services.outgoing_webhooks.delivery import (
    LEASE_MARGIN_S,
    Claimed,
    Outcome,
    claim_due_deliveries,
    delivery_backlog,
    parse_schedule,
    record_outcome,
    reencrypt_secrets,
)
from services.outgoing_webhooks.fanout import fan_out
from services.outgoing_webhooks.reconcile import refan_published_events
from services.outgoing_webhooks.safe_http import AttemptFailed, Resolver, SafeHttpClient, system_resolver
from services.outgoing_webhooks.signing import signed_headers

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
    """The consumer and the deliverer until ``runtime.stop``; ``resolver`` resolves endpoint names."""
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


@dataclass(frozen=True)
class DeliveryRules:
    """How the deliverer works, from the settings."""

    batch_size: int
    lease_s: float
    schedule: list[float]
    hmac_secrets: list[str]

    @classmethod
    def of(cls, settings: WebhooksSettings) -> DeliveryRules:
        return cls(
            batch_size=settings.webhook_batch_size,
            lease_s=settings.webhook_timeout_s + LEASE_MARGIN_S,
            schedule=parse_schedule(settings.webhook_retry_schedule_s),
            hmac_secrets=[settings.hmac_secret, settings.hmac_secret_previous],
        )


async def deliver_due(
    pool: psycopg_pool.AsyncConnectionPool[Connection], client: SafeHttpClient, rules: DeliveryRules
) -> int:
    """One pass: claim up to a batch of due deliveries, attempt them at once, record each outcome;
    returns how many were claimed."""
    async with transaction(pool) as conn:
        claimed = await claim_due_deliveries(
            conn, limit=rules.batch_size, lease_s=rules.lease_s, hmac_secrets=rules.hmac_secrets
        )
    if claimed:
        await asyncio.gather(*(_attempt(pool, client, delivery, rules.schedule) for delivery in claimed))
    return len(claimed)


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


async def attempt_delivery(client: SafeHttpClient, delivery: Claimed) -> Outcome:
    """One signed POST of ``delivery``; never raises for what the endpoint or the network did."""
    if delivery.secret is None:
        return Outcome(error="not sent: no configured HMAC_SECRET decrypts the endpoint's signing secret")
    headers = signed_headers(delivery.secret, delivery.webhook_id, int(time.time()), delivery.body)
    try:
        answer = await client.post(delivery.url, delivery.body, headers)
    except AttemptFailed as failure:
        if failure.kind == "refused":
            metrics.OUTGOING_WEBHOOKS.labels("refused").inc()
        return Outcome(error=str(failure))
    return Outcome(status=answer.status, body=answer.body, error=None if answer.succeeded else f"HTTP {answer.status}")


async def _attempt(
    pool: psycopg_pool.AsyncConnectionPool[Connection], client: SafeHttpClient, delivery: Claimed, schedule: list[float]
) -> None:
    started = time.monotonic()
    outcome = await attempt_delivery(client, delivery)
    metrics.OUTGOING_WEBHOOK_SECONDS.observe(time.monotonic() - started)
    try:
        async with transaction(pool) as conn:
            result = await record_outcome(conn, delivery, outcome, schedule=schedule, now=await database_now(conn))
    except UNAVAILABLE_ERRORS as error:
        # The claim's lease runs out and the delivery is attempted again: at least once.
        log.warning("could not record a webhook attempt", extra={"delivery": str(delivery.id), "error": repr(error)})
        return
    metrics.OUTGOING_WEBHOOKS.labels(result).inc()
    if result != "delivered":
        log.info(
            "webhook attempt failed",
            extra={"delivery": str(delivery.id), "attempt": delivery.attempt, "result": result, "error": outcome.error},
        )


RECONCILE_BATCH = 5000


async def _reconcile(settings: WebhooksSettings, runtime: Runtime, queued: asyncio.Event) -> None:
    """Fan out again, every interval, the events the outbox published (see ``reconcile``): what a
    broker lost before this service consumed it is delivered all the same."""
    topics = webhook_source_topics(settings)
    since: datetime | None = None
    while not runtime.stop.is_set():
        full = False
        try:
            async with transaction(runtime.pool) as conn:
                now = await database_now(conn)
                if since is None:
                    since = now - timedelta(seconds=settings.webhook_reconcile_lookback_s)
                done = await refan_published_events(conn, topics, since=since, until=now, limit=RECONCILE_BATCH)
            since, full = done.next_since, done.rows >= RECONCILE_BATCH
            if done.new_deliveries:
                metrics.OUTGOING_WEBHOOK_RECONCILED.inc(done.new_deliveries)
                log.info("reconcile found events the consumer had not", extra={"deliveries": done.new_deliveries})
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
