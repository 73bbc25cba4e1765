"""The deliverer's pass: claim due deliveries, attempt each once (signed, through the safe client), and
record the outcomes in groups. ``services.outgoing_webhooks.service`` runs it in a loop; tests run
single passes.

Recording is a group commit (:class:`services.common.coalesce.Coalescer`): the outcomes that finish
while a group is being written go to PostgreSQL together as the next group, in one transaction
(:func:`services.outgoing_webhooks.delivery.record_outcomes`). A lone outcome is written at once; a
busy pass writes about one group per round of the database, not one transaction per webhook. Each
attempt still learns its own result, and a pass returns only once every outcome of it is committed.

One coalescer per pass, not per loop or per pool: a loop runs its passes one after another and each
pass waits for its last outcome, so outcomes of two passes never meet and a longer-lived coalescer
would group nothing more; one per pass keeps no state between passes and needs no new parameter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg_pool

from services.common import metrics
from services.common.coalesce import Coalescer
from services.common.config import WebhooksSettings
from services.common.db import UNAVAILABLE_ERRORS, Connection, transaction
from services.outgoing_webhooks.delivery import (
    LEASE_MARGIN_S,
    Attempted,
    Claimed,
    Outcome,
    claim_due_deliveries,
    parse_schedule,
    record_outcomes,
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
    """One pass: claim up to a batch of due deliveries, attempt them at once, record their outcomes in
    groups (module docstring); returns how many were claimed, once every outcome is committed."""
    async with transaction(pool) as conn:
        claimed = await claim_due_deliveries(
            conn, limit=rules.batch_size, lease_s=rules.lease_s, hmac_secrets=rules.hmac_secrets
        )
    if claimed:

        async def record(group: Sequence[Attempted]) -> list[str]:
            async with transaction(pool) as conn:
                return await record_outcomes(conn, group, schedule=rules.schedule)

        recorder: Coalescer[Attempted, str] = Coalescer(record)
        await asyncio.gather(*(_attempt(recorder, client, delivery) for delivery in claimed))
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


async def _attempt(recorder: Coalescer[Attempted, str], client: SafeHttpClient, delivery: Claimed) -> None:
    started = time.monotonic()
    outcome = await attempt_delivery(client, delivery)
    # Counted right before the outcome is queued for its group (a test waits on the count).
    metrics.OUTGOING_WEBHOOK_SECONDS.observe(time.monotonic() - started)
    try:
        result = await recorder.submit(Attempted(delivery, outcome))
    except UNAVAILABLE_ERRORS as error:
        # The group could not be recorded: the claim's lease runs out and the delivery is attempted
        # again (at least once), as for every other member of the group.
        log.warning("could not record a webhook attempt", extra={"delivery": str(delivery.id), "error": repr(error)})
        return
    metrics.OUTGOING_WEBHOOKS.labels(result).inc()
    if result != "delivered":
        log.info(
            "webhook attempt failed",
            extra={"delivery": str(delivery.id), "attempt": delivery.attempt, "result": result, "error": outcome.error},
        )
