"""The scheduler's ``leads.suppressed`` consumer (an entrypoint): decode, cancel in one transaction, commit.

The domain — what a suppression does to enrollments — is :func:`services.scheduler.suppressions.
cancel_enrollments_of`; this module only connects it to Kafka.
"""

from __future__ import annotations

import logging

from proto.messages import AnyMessage, LeadSuppressed
from services.common.bus import make_consumer
from services.common.config import SchedulerSettings
from services.common.consumer import consume, one_at_a_time
from services.common.db import transaction
from services.common.runtime import Runtime
from services.scheduler.suppressions import cancel_enrollments_of

log = logging.getLogger(__name__)

SUPPRESSION_CONSUMER_GROUP = "healingwork-scheduler-suppressions"


async def consume_suppressions(settings: SchedulerSettings, runtime: Runtime) -> None:
    """Consume ``leads.suppressed`` until the runtime stops: each message cancels the address's enrollments."""

    async def on_message(message: AnyMessage) -> None:
        if not isinstance(message, LeadSuppressed):
            return
        async with transaction(runtime.pool) as conn:
            cancelled = await cancel_enrollments_of(
                conn, message.email_hash, reason=message.reason, lifecycle_topic=settings.topic_lifecycle_events
            )
        if cancelled:
            log.info("suppressed address: enrollments cancelled", extra={"cancelled": cancelled})

    consumer = make_consumer(settings, settings.topic_leads_suppressed, SUPPRESSION_CONSUMER_GROUP)
    await consume(
        consumer,
        one_at_a_time(on_message),
        stop=runtime.stop,
        name="scheduler-suppressions",
        shutdown=runtime.shutdown,
        topics_ready=runtime.topics_ready,
    )
