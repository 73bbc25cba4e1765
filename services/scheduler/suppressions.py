"""The scheduler's side of suppressions: a suppressed address gets no further step of any Sequence.

Domain only (a function over a connection); the Kafka consumer that calls it is
:mod:`services.scheduler.suppression_consumer`.
"""

from __future__ import annotations

from services.common.db import Connection


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
