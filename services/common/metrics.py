"""Prometheus metrics of every service, in one registry per process."""

from __future__ import annotations

import psycopg_pool
from prometheus_client import Counter, Gauge, Histogram

from services.common.db import UNAVAILABLE_ERRORS, Connection

LEADS = Counter(
    "healingwork_leads_total", "Lead submissions by outcome (accepted, duplicate, rejected, honeypot)", ["outcome"]
)
LEADS_ERASED = Counter("healingwork_leads_erased_total", "Leads erased on request (GDPR)")
OUTBOX_BACKLOG = Gauge("healingwork_outbox_backlog", "Outbox rows not yet published")
OUTBOX_PUBLISHED = Counter("healingwork_outbox_published_total", "Outbox rows published to Kafka")
OUTBOX_RELAY_FAILURES = Counter("healingwork_outbox_relay_failures_total", "Outbox relay passes that failed")
OUTBOX_OLDEST_AGE = Gauge(
    "healingwork_outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox row"
)
KAFKA_REACHABLE = Gauge(
    "healingwork_kafka_reachable",
    "1 while the outbox relay (or topic creation) of this process reaches Kafka, 0 while it cannot",
)
CONSUMED = Counter("healingwork_consumed_total", "Kafka records handled", ["consumer", "type"])
CONSUMER_FAILURES = Counter("healingwork_consumer_failures_total", "Kafka records not handled", ["consumer", "reason"])
ENROLLMENTS = Counter("healingwork_enrollments_total", "Enrollments created")
STEPS_EMITTED = Counter("healingwork_steps_emitted_total", "Sequence steps queued for sending")
STEPS_NOT_SENT = Counter(
    "healingwork_steps_not_sent_total", "Sequence steps skipped by a condition or failed by one", ["outcome"]
)
CUSTOM_EVENTS = Counter("healingwork_custom_events_total", "Custom events received", ["outcome"])
# A/B variants: steps queued per variant (scheduler) and human opens and clicks per variant (intake
# tracking); the exact unique rates per day are in daily_variant_stats (GET /v1/stats).
VARIANT_EVENTS = Counter(
    "healingwork_variant_events_total",
    "Steps queued, opened and clicked per A/B variant",
    ["sequence", "step", "variant", "event"],
)
ENROLLMENT_EXITS = Counter("healingwork_enrollment_exits_total", "Enrollments ended early", ["reason"])
ENROLLMENTS_NOT_TRIGGERED = Counter(
    "healingwork_enrollments_not_triggered_total", "Leads a trigger.when kept out (false, or failed)", ["outcome"]
)
EMAILS = Counter("healingwork_emails_total", "Email send outcomes", ["outcome"])
CONFIRMATION_EMAILS = Counter(
    "healingwork_confirmation_emails_total", "Double opt-in confirmation email outcomes", ["outcome"]
)
SMTP_SECONDS = Histogram("healingwork_smtp_send_seconds", "Time of one SMTP transaction")


async def observe_outbox_backlog(pool: psycopg_pool.AsyncConnectionPool[Connection]) -> None:
    """Refresh the outbox backlog gauges (served by the partial index on unpublished rows)."""
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                """SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age, count(*) AS backlog
                   FROM outbox WHERE published_at IS NULL"""
            )
            row = await cursor.fetchone()
    except UNAVAILABLE_ERRORS:
        return
    OUTBOX_OLDEST_AGE.set(float(row["age"]) if row else 0.0)  # type: ignore[arg-type]
    OUTBOX_BACKLOG.set(int(row["backlog"]) if row else 0)  # type: ignore[call-overload]


SMTP_CONNECTS = Counter("healingwork_smtp_connects_total", "SMTP connections opened")
SMTP_THROTTLED = Counter("healingwork_smtp_throttled_total", "SMTP replies 421/451/454 that paused the pool")
SEND_RATE_WAIT_SECONDS = Counter(
    "healingwork_send_rate_wait_seconds_total", "Time dispatchers waited for the shared send rate"
)
TRACKING = Counter("healingwork_tracking_total", "Tracking requests by kind and outcome", ["kind", "outcome"])
WEBHOOK_EVENTS = Counter("healingwork_webhook_events_total", "Provider events received", ["adapter", "outcome"])
SUPPRESSIONS = Counter("healingwork_suppressions_total", "Addresses suppressed", ["reason"])
OUTGOING_WEBHOOKS = Counter(
    "healingwork_outgoing_webhook_attempts_total",
    "Outgoing webhook attempts by result (delivered, retrying, failed: gave up after the schedule; "
    "refused: the address is not public, counted also as retrying or failed)",
    ["result"],
)
OUTGOING_WEBHOOK_SECONDS = Histogram("healingwork_outgoing_webhook_seconds", "Time of one outgoing webhook attempt")
OUTGOING_WEBHOOK_BACKLOG = Gauge(
    "healingwork_outgoing_webhook_backlog",
    "Outgoing webhook deliveries pending (due or scheduled), per endpoint",
    ["endpoint"],
)
OUTGOING_WEBHOOK_OLDEST_AGE = Gauge(
    "healingwork_outgoing_webhook_oldest_pending_age_seconds",
    "Age of the oldest pending outgoing webhook delivery, per endpoint",
    ["endpoint"],
)
OUTGOING_WEBHOOK_ENDPOINTS_DISABLED = Counter(
    "healingwork_outgoing_webhook_endpoints_disabled_total", "Webhook endpoints disabled after persistent failure"
)
OUTGOING_WEBHOOK_RECONCILED = Counter(
    "healingwork_outgoing_webhook_reconciled_total",
    "Outgoing webhook deliveries made by the reconcile pass (events the consumer never got: a broker lost them)",
)
