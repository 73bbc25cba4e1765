"""The deliverer's pass: claim due deliveries, attempt each once (signed, through the safe client), and
record every outcome in its own short transaction. ``services.outgoing_webhooks.service`` runs it in a
loop; tests run single passes."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import psycopg_pool

from services.common import metrics
from services.common.clock import database_now
from services.common.config import WebhooksSettings
from services.common.db import UNAVAILABLE_ERRORS, Connection, transaction
from services.outgoing_webhooks.delivery import (
    LEASE_MARGIN_S,
    Claimed,
    Outcome,
    claim_due_deliveries,
    parse_schedule,
    record_outcome,
)
from services.outgoing_webhooks.safe_http import AttemptFailed, SafeHttpClient
from services.outgoing_webhooks.signing import signed_headers

log = logging.getLogger(__name__)


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


async def attempt_delivery(client: SafeHttpClient, delivery: Claimed) -> Outcome:
    """One signed POST of ``delivery``; never raises for what the endpoint or the network did."""
    if delivery.secret is None:
        return Outcome(error="not sent: no configured HMAC_SECRET decrypts the endpoint's signing secret")
    headers = signed_headers(
        delivery.secret, delivery.webhook_id, int(time.time()), delivery.body, previous_secret=delivery.previous_secret
    )
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
