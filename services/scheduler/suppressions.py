"""The scheduler's side of suppressions: a suppressed address gets no further step of any Sequence.

Domain only (a function over a connection); the Kafka consumer that calls it is
:mod:`services.scheduler.suppression_consumer`.
"""

from __future__ import annotations

from services.common.db import Connection
from services.common.enrollment_events import ENROLLMENT_COLUMNS, EnrollmentRef, announce_ended


async def cancel_enrollments_of(
    conn: Connection, email_hash: str, *, reason: str = "suppressed", lifecycle_topic: str | None = None
) -> int:
    """Cancel every active enrollment of every lead with this address hash; returns how many. With
    ``lifecycle_topic``, each is announced there as ``enrollment.ended`` (exited, for the suppression's
    ``reason``: unsubscribed, bounced, complained).

    Idempotent: cancelled enrollments are no longer active. Messages already queued are skipped by
    the dispatcher, which checks suppressions before every send.
    """
    cursor = await conn.execute(
        """UPDATE enrollments e
           SET status = 'cancelled', next_run_at = NULL, updated_at = now()
           FROM leads l
           WHERE l.email_hash = %s AND e.lead_id = l.id AND e.status = 'active'
           RETURNING """  # noqa: S608 - a constant column list, no input
        + ENROLLMENT_COLUMNS,
        (email_hash,),
    )
    cancelled = [EnrollmentRef.of(row) for row in await cursor.fetchall()]
    if lifecycle_topic is not None:
        await announce_ended(conn, lifecycle_topic, cancelled, outcome="exited", reason=reason)
    return len(cancelled)
