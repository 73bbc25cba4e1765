"""The scheduler's side of suppressions: a suppressed address gets no further step of any Sequence."""

from __future__ import annotations

import logging

from proto.messages import AnyMessage, LeadSuppressed
from services.common.bus import make_consumer, run_consumer
from services.common.config import SchedulerSettings
from services.common.db import Connection, transaction
from services.common.runtime import Runtime

log = logging.getLogger(__name__)


async def cancel_enrollments_of(conn: Connection, email_hash: str) -> int:
    """Cancel every active enrollment of every lead with this address hash; returns how many.

    Idempotent: cancelled enrollments are no longer active. Messages already queued are skipped by
    the dispatcher, which checks suppressions before every send.
    """
    result = await conn.execute(
        """UPDATE enrollments e
           SET status = 'cancelled', next_run_at = NULL, updated_at = now()
           FROM leads l
           WHERE l.email_hash = %s AND e.lead_id = l.id AND e.status = 'active'""",
        (email_hash,),
    )
    return result.rowcount


SUPPRESSION_CONSUMER_GROUP = "healingwork-scheduler-suppressions"


async def consume_suppressions(settings: SchedulerSettings, runtime: Runtime) -> None:
    """Consume ``leads.suppressed`` until the runtime stops: each message cancels the address's enrollments."""

    async def on_message(message: AnyMessage) -> None:
        if not isinstance(message, LeadSuppressed):
            return
        async with transaction(runtime.pool) as conn:
            cancelled = await cancel_enrollments_of(conn, message.email_hash)
        if cancelled:
            log.info("suppressed address: enrollments cancelled", extra={"cancelled": cancelled})

    consumer = make_consumer(settings, settings.topic_leads_suppressed, SUPPRESSION_CONSUMER_GROUP)
    await run_consumer(consumer, on_message, stop=runtime.stop, name="scheduler-suppressions")
