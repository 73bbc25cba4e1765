"""``healingwork job retry-failed``: send again what failed, and reconcile what got lost on the way.

PostgreSQL says what should happen; this job repairs where Kafka did not deliver it, like a
controller comparing desired and actual state:

* a ``retrying`` message whose retry time has come goes back to ``queued`` with a new
  ``email.dispatch`` command in the outbox; past the attempt cap it is marked ``dead`` and
  dead-lettered instead;
* a ``queued`` message with no result after ``STUCK_QUEUED_AFTER_S`` gets its command again
  (the dispatcher sends a message at most once per claim, so a duplicate command sends nothing);
* a lead accepted but never handled by the scheduler (``enrolled_at IS NULL``) after
  ``UNENROLLED_LEAD_AFTER_S`` gets its ``lead.accepted`` again (enrolling is idempotent).

So a broker that lost every message heals. Messages in ``sending`` for too long are *not* sent again
by default: the provider may have accepted them (the SMTP duplicate window); they are counted and
logged. With ``RESEND_STUCK_SENDING=true`` (for providers that honour the idempotency header the
dispatcher sends, or where a rare duplicate is better than a lost email) they are queued again instead.

Every step claims at most a batch of rows with ``FOR UPDATE SKIP LOCKED`` in one short transaction,
served by a partial index (the queries are module constants so a test can EXPLAIN them).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from proto.messages import LeadAccepted
from services.common.clock import utcnow
from services.common.config import JobSettings
from services.common.db import Connection
from services.common.message_lifecycle import transitions as lifecycle
from services.common.message_lifecycle.states import has_attempts_left
from services.common.outbox import enqueue_messages
from services.jobs.runner import JobContext, in_batches

log = logging.getLogger(__name__)

# Served by messages_retry_due_idx (next_attempt_at) WHERE status = 'retrying'.
DUE_RETRIES = """SELECT id, attempts FROM messages
    WHERE status = 'retrying' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED"""

# Served by messages_queued_idx (updated_at) WHERE status = 'queued'.
STUCK_QUEUED = """SELECT id FROM messages
    WHERE status = 'queued' AND updated_at < now() - %(age)s
    ORDER BY updated_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED"""

# Served by messages_sending_idx (sending_at) WHERE status = 'sending'.
STUCK_SENDING = """SELECT count(*) AS stuck, coalesce(extract(epoch FROM now() - min(sending_at)), 0) AS oldest_s
    FROM messages
    WHERE status = 'sending' AND sending_at < now() - %(age)s"""

# Served by leads_unenrolled_idx (created_at) WHERE enrolled_at IS NULL.
UNENROLLED_LEADS = """SELECT id, source, tags FROM leads
    WHERE enrolled_at IS NULL AND created_at < now() - %(age)s
      AND (republished_at IS NULL OR republished_at < now() - %(age)s)
      -- a lead waiting for its double opt-in confirmation is not lost: it is held on purpose
      AND NOT (confirmation_required AND confirmed_at IS NULL)
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED"""


async def requeue_due_retries(
    conn: Connection, *, limit: int, max_attempts: int, dispatch_topic: str, events_topic: str, dlq_topic: str
) -> tuple[int, int]:
    """Claim up to ``limit`` messages whose retry is due: queue each one again with its
    ``email.dispatch`` command, or, when it has used ``max_attempts``, mark it ``dead``, record the
    event and dead-letter it. Returns (requeued, dead)."""
    cursor = await conn.execute(DUE_RETRIES, {"limit": limit})
    rows = await cursor.fetchall()
    again = [row["id"] for row in rows if has_attempts_left(int(row["attempts"]), max_attempts)]  # type: ignore[call-overload]
    spent = [row["id"] for row in rows if not has_attempts_left(int(row["attempts"]), max_attempts)]  # type: ignore[call-overload]
    requeued = await lifecycle.requeue_retry(conn, again, dispatch_topic=dispatch_topic)  # type: ignore[arg-type]
    dead = await lifecycle.give_up(
        conn,
        spent,  # type: ignore[arg-type]
        max_attempts=max_attempts,
        events_topic=events_topic,
        dlq_topic=dlq_topic,
    )
    return len(requeued), len(dead)


async def republish_stuck_queued(conn: Connection, *, older_than: timedelta, limit: int, dispatch_topic: str) -> int:
    """Queue the ``email.dispatch`` command again for up to ``limit`` messages ``queued`` for longer
    than ``older_than``; each one's clock restarts, so it is re-published at most once per period."""
    cursor = await conn.execute(STUCK_QUEUED, {"age": older_than, "limit": limit})
    ids = [row["id"] for row in await cursor.fetchall()]
    return len(await lifecycle.republish(conn, ids, dispatch_topic=dispatch_topic))  # type: ignore[arg-type]


async def republish_unenrolled_leads(conn: Connection, *, older_than: timedelta, limit: int, topic: str) -> int:
    """Queue ``lead.accepted`` again for up to ``limit`` leads the scheduler has not handled within
    ``older_than`` (and not re-published within it either)."""
    cursor = await conn.execute(UNENROLLED_LEADS, {"age": older_than, "limit": limit})
    rows = await cursor.fetchall()
    if not rows:
        return 0
    await conn.execute("UPDATE leads SET republished_at = now() WHERE id = ANY(%s)", ([row["id"] for row in rows],))
    now = utcnow()
    await enqueue_messages(
        conn,
        [
            (
                topic,
                str(row["id"]),
                LeadAccepted(
                    id=row["id"],  # type: ignore[arg-type]
                    occurred_at=now,
                    lead_id=row["id"],  # type: ignore[arg-type]
                    source=str(row["source"]),
                    tags=list(row["tags"]),  # type: ignore[call-overload]
                ),
            )
            for row in rows
        ],
    )
    return len(rows)


# Served by messages_sending_idx (sending_at) WHERE status = 'sending'.
STUCK_SENDING_ROWS = """SELECT id FROM messages
    WHERE status = 'sending' AND sending_at < now() - %(age)s
    ORDER BY sending_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED"""


async def requeue_stuck_sending(conn: Connection, *, older_than: timedelta, limit: int, dispatch_topic: str) -> int:
    """Queue again up to ``limit`` messages ``sending`` for longer than ``older_than`` (their dispatcher
    died between the claim and the recorded outcome), with a new ``email.dispatch`` command. The email
    may already be with the provider: this trades a possible duplicate (inside the recorded window,
    carrying the same Message-ID and idempotency header) for never losing it."""
    cursor = await conn.execute(STUCK_SENDING_ROWS, {"age": older_than, "limit": limit})
    ids = [row["id"] for row in await cursor.fetchall()]
    return len(await lifecycle.requeue_stuck(conn, ids, dispatch_topic=dispatch_topic))  # type: ignore[arg-type]


async def count_stuck_sending(conn: Connection, *, older_than: timedelta) -> tuple[int, float]:
    """How many messages have been ``sending`` for longer than ``older_than``, and the oldest's age (s)."""
    cursor = await conn.execute(STUCK_SENDING, {"age": older_than})
    row = await cursor.fetchone()
    assert row is not None, "an aggregate always returns a row"
    return int(row["stuck"]), float(row["oldest_s"])  # type: ignore[call-overload, arg-type]


async def retry_failed(ctx: JobContext, *, batch_size: int | None = None) -> dict[str, int]:
    """The job: every step above in bounded batches; returns what it did and what it saw."""
    settings: JobSettings = ctx.settings
    size = batch_size or settings.retry_batch_size
    requeued = dead = 0

    async def requeue(conn: Connection) -> int:
        nonlocal requeued, dead
        again, spent = await requeue_due_retries(
            conn,
            limit=size,
            max_attempts=settings.max_attempts,
            dispatch_topic=settings.topic_email_dispatch,
            events_topic=settings.topic_email_events,
            dlq_topic=settings.topic_email_dlq,
        )
        requeued, dead = requeued + again, dead + spent
        return again + spent

    async def queued(conn: Connection) -> int:
        return await republish_stuck_queued(
            conn,
            older_than=timedelta(seconds=settings.stuck_queued_after_s),
            limit=size,
            dispatch_topic=settings.topic_email_dispatch,
        )

    async def leads(conn: Connection) -> int:
        return await republish_unenrolled_leads(
            conn,
            older_than=timedelta(seconds=settings.unenrolled_lead_after_s),
            limit=size,
            topic=settings.topic_leads_accepted,
        )

    async def sending(conn: Connection) -> int:
        return await requeue_stuck_sending(
            conn,
            older_than=timedelta(seconds=settings.stuck_sending_after_s),
            limit=size,
            dispatch_topic=settings.topic_email_dispatch,
        )

    batches = await in_batches(ctx.pool, requeue, size)
    resent_sending = sum(await in_batches(ctx.pool, sending, size)) if settings.resend_stuck_sending else 0
    republished_messages = sum(await in_batches(ctx.pool, queued, size))
    republished_leads = sum(await in_batches(ctx.pool, leads, size))
    async with ctx.pool.connection() as conn:
        stuck, oldest_s = await count_stuck_sending(conn, older_than=timedelta(seconds=settings.stuck_sending_after_s))
    if stuck:
        log.warning(
            "messages stuck in sending: the provider may have accepted them, so they are not sent again",
            extra={
                "stuck_sending": stuck,
                "oldest_s": round(oldest_s),
                "query": "SELECT * FROM messages WHERE status = 'sending'",
            },
        )
    return {
        "requeued": requeued,
        "dead": dead,
        "batches": len(batches),
        "republished_messages": republished_messages,
        "republished_leads": republished_leads,
        "stuck_sending": stuck,
        "resent_sending": resent_sending,
    }
