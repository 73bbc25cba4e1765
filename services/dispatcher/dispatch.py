"""The life of a message: claim it (``sending`` is committed before the SMTP call), send it, record
the outcome. Idempotent on the message id: a redelivered command for a message that is sent, sending,
dead or not yet due for retry sends nothing.

The messages of one Kafka batch are read in one statement and sent concurrently over the SMTP pool;
each is claimed only when a connection and a rate permit are in hand, and each outcome is committed
as soon as its SMTP transaction ends, which keeps the duplicate window as short as SMTP allows.

The one honest gap: a crash after the provider accepted the message and before ``sent`` is committed
leaves it in ``sending``; the reconcile job finds it by age, so the duplicate window is visible and
counted, never silent. Stopping never widens it: from its claim to its recorded outcome a message is
one unit that cancellation waits for (bounded by the SMTP timeouts), and messages still waiting for a
connection or a rate permit are not claimed yet, so they stay ``queued`` for the next owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql

from proto.codec import encode_message
from proto.messages import EmailDeadLettered
from services.common import metrics
from services.common.clock import utcnow
from services.common.compose import ComposeSettings, MessageIdentity, StepContent, compose_email
from services.common.config import DispatcherSettings
from services.common.db import UNAVAILABLE_ERRORS, Connection, transaction
from services.common.events import EVENT_CTES, MessageRef, NewEvent, event_parameters
from services.common.outbox import WAKE_RELAYS
from services.common.retry import backoff_delay, retry_async
from services.common.templates import RenderError, TemplateLead
from services.dispatcher.coalesce import Coalescer
from services.dispatcher.rate import SharedRateLimiter
from services.dispatcher.smtp import SendError, SmtpConnection, SmtpPool

log = logging.getLogger(__name__)

T = TypeVar("T")

# The event announced for each final status of an attempt.
EVENT_OF_STATUS = {"sent": "sent", "retrying": "failed", "dead": "dead", "skipped": "skipped"}


@dataclass(frozen=True)
class SendJob:
    """Everything needed to send one claimed message."""

    message_id: uuid.UUID
    enrollment_id: uuid.UUID
    lead_id: uuid.UUID
    sequence_id: uuid.UUID
    revision: int
    step_position: int
    attempts: int
    to_email: str
    first_name: str | None
    last_name: str | None
    source: str
    sequence_name: str
    step_name: str
    subject: str
    html: str | None
    text: str | None
    from_email: str | None
    from_name: str | None
    suppressed: bool
    claimed_at: datetime | None = None  # set by claim_message


async def load_jobs(conn: Connection, message_ids: Iterable[uuid.UUID]) -> list[SendJob]:
    """Read what is needed to send each message that may be sent now (queued, or a retry that is due);
    others (sent, sending, dead, skipped, a retry not yet due) are not returned. Changes nothing: each
    message is claimed by :func:`claim_message` only when an SMTP connection is ready for it."""
    cursor = await conn.execute(
        """SELECT m.id, m.enrollment_id, m.lead_id, m.sequence_id, m.revision, m.step_position, m.attempts,
                  l.email, l.first_name, l.last_name, l.source, s.name AS sequence_name,
                  st.name AS step_name, st.subject, st.html, st.text,
                  r.spec -> 'from' ->> 'email' AS from_email, r.spec -> 'from' ->> 'name' AS from_name,
                  EXISTS (SELECT 1 FROM suppressions x WHERE x.email_hash = l.email_hash) AS suppressed
           FROM messages m
           JOIN leads l ON l.id = m.lead_id
           JOIN sequences s ON s.id = m.sequence_id
           JOIN sequence_revisions r ON r.sequence_id = m.sequence_id AND r.revision = m.revision
           JOIN sequence_steps st
             ON st.sequence_id = m.sequence_id AND st.revision = m.revision AND st.position = m.step_position
           WHERE m.id = ANY(%s)
             AND m.status IN ('queued', 'retrying')
             AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= now())""",
        (list(message_ids),),
    )
    return [
        SendJob(
            message_id=row["id"],  # type: ignore[arg-type]
            enrollment_id=row["enrollment_id"],  # type: ignore[arg-type]
            lead_id=row["lead_id"],  # type: ignore[arg-type]
            sequence_id=row["sequence_id"],  # type: ignore[arg-type]
            revision=row["revision"],  # type: ignore[arg-type]
            step_position=row["step_position"],  # type: ignore[arg-type]
            attempts=row["attempts"],  # type: ignore[arg-type]
            to_email=row["email"],  # type: ignore[arg-type]
            first_name=row["first_name"],  # type: ignore[arg-type]
            last_name=row["last_name"],  # type: ignore[arg-type]
            source=row["source"],  # type: ignore[arg-type]
            sequence_name=row["sequence_name"],  # type: ignore[arg-type]
            step_name=row["step_name"],  # type: ignore[arg-type]
            subject=row["subject"],  # type: ignore[arg-type]
            html=row["html"],  # type: ignore[arg-type]
            text=row["text"],  # type: ignore[arg-type]
            from_email=row["from_email"],  # type: ignore[arg-type]
            from_name=row["from_name"],  # type: ignore[arg-type]
            suppressed=row["suppressed"],  # type: ignore[arg-type]
        )
        for row in await cursor.fetchall()
    ]


# One statement for a group of the dispatcher's writes, so a group costs one round trip: record each
# outcome (only where the message is still ``sending``), its event and, for a dead one, its dead letter;
# then claim the jobs (``sending`` committed, attempt counted) that may still be sent now. Records and
# claims touch disjoint rows: a message is either ``sending`` or claimable, never both.
_WRITE_GROUP = (
    sql.SQL(
        """WITH o AS (
               SELECT * FROM unnest(%(o_id)s::uuid[], %(o_status)s::text[], %(o_detail)s::text[],
                                    %(o_retry_in)s::interval[], %(o_dead_letter)s::bytea[])
                   AS o(id, status, detail, retry_in, dead_letter)),
           recorded AS (
               UPDATE messages m
               SET status = o.status,
                   sent_at = CASE WHEN o.status = 'sent' THEN now() END,
                   next_attempt_at = CASE WHEN o.status = 'retrying' THEN now() + o.retry_in END,
                   smtp_response = CASE WHEN o.status = 'sent' THEN o.detail ELSE m.smtp_response END,
                   last_error = CASE WHEN o.status = 'sent' THEN m.last_error ELSE o.detail END,
                   updated_at = now()
               FROM o
               WHERE m.id = o.id AND m.status = 'sending'
               RETURNING m.id),
           {event_ctes},
           dead_lettered AS (
               INSERT INTO outbox (topic, key, payload)
               SELECT %(dlq_topic)s, o.id::text, o.dead_letter FROM o JOIN recorded USING (id)
               WHERE o.dead_letter IS NOT NULL
               RETURNING id),
           claimed AS (
               UPDATE messages
               SET status = 'sending', attempts = attempts + 1, next_attempt_at = NULL,
                   sending_at = now(), updated_at = now()
               WHERE id = ANY(%(claim_ids)s) AND status IN ('queued', 'retrying')
                 AND (next_attempt_at IS NULL OR next_attempt_at <= now())
               RETURNING id, attempts, sending_at),
           woken AS (
               SELECT {wake} WHERE EXISTS (SELECT FROM ev_queued) OR EXISTS (SELECT FROM dead_lettered))
           -- `woken` is selected only so that it runs: a CTE that modifies nothing runs only if read.
           -- One row even when nothing is claimed, so `recorded` always comes back.
           SELECT c.id, c.attempts, c.sending_at,
                  (SELECT count(*) FROM recorded) AS recorded, (SELECT count(*) FROM woken) AS woken
           FROM (VALUES (1)) AS one LEFT JOIN claimed c ON true"""
    )
    .format(
        event_ctes=EVENT_CTES.format(where=sql.SQL("WHERE ev.message_id IN (SELECT id FROM recorded)")),
        wake=WAKE_RELAYS,
    )
    .as_string()
)


async def write_group(
    conn: Connection, outcomes: Sequence[Outcome], jobs: Sequence[SendJob], *, events_topic: str, dlq_topic: str
) -> tuple[list[SendJob | None], int]:
    """Record ``outcomes`` (their ``events`` and dead letters included) and claim ``jobs``, in one
    statement; returns one result per job (the claimed job, or None if it may not be sent now) and how
    many outcomes were written."""
    cursor = await conn.execute(
        _WRITE_GROUP,
        {
            "o_id": [o.job.message_id for o in outcomes],
            "o_status": [o.status for o in outcomes],
            "o_detail": [o.detail[:2000] for o in outcomes],
            "o_retry_in": [o.retry_in for o in outcomes],
            "o_dead_letter": [
                encode_message(dead_letter(o.job, o.detail)) if o.status == "dead" else None for o in outcomes
            ],
            "dlq_topic": dlq_topic,
            "claim_ids": [job.message_id for job in jobs],
            **event_parameters(
                [
                    NewEvent(
                        message_ref(o.job),
                        EVENT_OF_STATUS[o.status],
                        o.detail,
                        dedupe_key=f"{claim_key(o.job)}/{o.status}",
                    )
                    for o in outcomes
                ],
                topic=events_topic,
            ),
        },
    )
    rows = await cursor.fetchall()
    claimed = {row["id"]: row for row in rows if row["id"] is not None}
    results = [
        replace(job, attempts=row["attempts"], claimed_at=row["sending_at"])  # type: ignore[arg-type]
        if (row := claimed.pop(job.message_id, None)) is not None
        else None
        for job in jobs
    ]
    return results, int(rows[0]["recorded"])  # type: ignore[call-overload]


async def claim_message(conn: Connection, job: SendJob) -> SendJob | None:
    """Move the message to ``sending`` and count the attempt, if it may still be sent now (another
    replica may have claimed it meanwhile); returns the claimed job, or None."""
    claimed, _ = await write_group(conn, [], [job], events_topic="", dlq_topic="")
    return claimed[0]


def claim_key(job: SendJob) -> str:
    """Unique per claim (attempt), so events and dead letters of a replayed message are their own."""
    return f"{job.message_id}/{job.claimed_at.timestamp() if job.claimed_at else 0}"


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt, to be recorded."""

    job: SendJob
    status: str
    detail: str
    retry_in: timedelta | None = None


def message_ref(job: SendJob) -> MessageRef:
    return MessageRef(job.message_id, job.lead_id, job.sequence_id, job.revision, job.step_position, job.step_name)


def dead_letter(job: SendJob, reason: str) -> EmailDeadLettered:
    """The dead letter announcing on the dead-letter topic that the message will not be delivered."""
    return EmailDeadLettered(
        id=uuid.uuid5(job.message_id, f"{claim_key(job)}/dead"),
        occurred_at=utcnow(),
        message_id=job.message_id,
        enrollment_id=job.enrollment_id,
        attempts=job.attempts,
        reason=reason[:2000],
    )


class Dispatcher:
    """Sends the messages named by ``email.dispatch`` commands."""

    def __init__(
        self,
        settings: DispatcherSettings,
        pool: psycopg_pool.AsyncConnectionPool[Connection],
        smtp: SmtpPool,
        rate: SharedRateLimiter | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._smtp = smtp
        self._rate = rate or SharedRateLimiter(pool, settings.smtp_rate_name, settings.smtp_rate_per_s)
        # Claims (SendJob) and outcomes (Outcome) share one group commit: under load the outcome of a
        # connection's last send and the claim of its next one go to PostgreSQL in one transaction.
        self._ledger: Coalescer[SendJob | Outcome, SendJob | None] = Coalescer(
            self._write_group, on_idle=self._release_connection
        )
        self._conn: Connection | None = None  # held by the ledger while it has work

    async def _write_group(self, items: Sequence[SendJob | Outcome]) -> list[SendJob | None]:
        """Record the outcomes, then claim the jobs, in one transaction; one result per item (the
        claimed job or None for a claim, None for an outcome)."""
        settings = self._settings
        outcomes = [item for item in items if isinstance(item, Outcome)]
        jobs = [item for item in items if isinstance(item, SendJob)]

        async def write() -> list[SendJob | None]:
            conn = self._conn or await self._checkout()
            try:
                # One statement in autocommit mode: atomic, and one round trip.
                claimed, _ = await write_group(
                    conn, outcomes, jobs, events_topic=settings.topic_email_events, dlq_topic=settings.topic_email_dlq
                )
            except BaseException:
                await self._release_connection()  # the pool discards it if it is broken
                raise
            return claimed

        # The emails of the outcomes may already be with the provider: try hard to record them, because
        # until then they sit in the duplicate window.
        claimed = iter(
            await retry_async(write, retry_on=UNAVAILABLE_ERRORS, attempts=8, max_delay_s=5.0, what="record outcomes")
        )
        for outcome in outcomes:
            metrics.EMAILS.labels(outcome.status).inc()
        return [next(claimed) if isinstance(item, SendJob) else None for item in items]

    async def _checkout(self) -> Connection:
        conn = await self._pool.getconn()
        await conn.set_autocommit(True)
        self._conn = conn
        return conn

    async def _release_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # a broken connection: the pool discards it
                await conn.set_autocommit(False)
            await self._pool.putconn(conn)

    async def dispatch(self, message_id: uuid.UUID) -> str | None:
        """Send one message if it may be sent now; returns the status it ended in, or None if skipped."""
        return (await self.dispatch_batch([message_id])).get(message_id)

    async def dispatch_batch(self, message_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Send the messages that may be sent now, concurrently (bounded by the SMTP pool and the
        shared rate); returns the final status of each message this call claimed.

        Each message is claimed (``sending`` committed) only once an SMTP connection and a rate permit
        are in hand, so at most DISPATCH_CONCURRENCY messages per replica are ever inside the duplicate
        window. Cancelling the call leaves unclaimed messages untouched and lets every claimed one finish
        (send and record) before the cancellation completes.
        """
        if not message_ids:
            return {}
        async with transaction(self._pool) as conn:
            jobs = await load_jobs(conn, dict.fromkeys(message_ids))
        results = await asyncio.gather(*(self._process(job) for job in jobs), return_exceptions=True)
        outcome: dict[uuid.UUID, str] = {}
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            if result is not None:
                outcome[job.message_id] = result
        return outcome

    async def _process(self, job: SendJob) -> str | None:
        if job.suppressed:
            return await _complete_even_if_cancelled(self._finish_unsent(job, "skipped", "recipient is suppressed"))
        try:
            sender, data = self._build(job)
        except RenderError as error:
            return await _complete_even_if_cancelled(self._finish_unsent(job, "dead", str(error)))
        # Waiting for a permit or a connection is cancellable: nothing is claimed yet. From here on the
        # task owns the connection and releases it.
        await self._rate.acquire()
        connection = await self._smtp.acquire()
        return await _complete_even_if_cancelled(self._claim_send_record(job, connection, sender, data))

    async def _claim_send_record(
        self, job: SendJob, connection: SmtpConnection, sender: str, data: bytes
    ) -> str | None:
        try:
            claimed = await self._ledger.submit(job)
            if claimed is None:
                return None
            status, detail, retry_in = await self._send(claimed, connection, sender, data)
        finally:
            # Free for the next message while this outcome is recorded. The window stays bounded by
            # DISPATCH_CONCURRENCY per replica: the connection's next claim is in this outcome's group or
            # a later one, and a group records before it claims, in one statement.
            self._smtp.release(connection)
        await self._ledger.submit(Outcome(claimed, status, detail, retry_in))
        return status

    async def _finish_unsent(self, job: SendJob, status: str, detail: str) -> str | None:
        claimed = await self._ledger.submit(job)
        if claimed is None:
            return None
        await self._ledger.submit(Outcome(claimed, status, detail))
        return status

    def _build(self, job: SendJob) -> tuple[str, bytes]:
        composed = compose_email(
            StepContent(job.sequence_name, job.step_name, job.subject, job.html, job.text),
            TemplateLead(job.to_email, job.first_name, job.last_name, job.source),
            MessageIdentity(job.message_id, job.from_email, job.from_name),
            ComposeSettings.of(self._settings, self._settings.hmac_secret),
        )
        return composed.sender, composed.data

    async def _send(
        self, job: SendJob, connection: SmtpConnection, sender: str, data: bytes
    ) -> tuple[str, str, timedelta | None]:
        settings = self._settings
        try:
            with metrics.SMTP_SECONDS.time():
                reply = await self._smtp.send(connection, sender, job.to_email, data)
        except SendError as error:
            if error.permanent or job.attempts >= settings.max_attempts:
                suffix = "" if error.permanent else f" (after {job.attempts} attempts)"
                return "dead", error.reason + suffix, None
            delay = backoff_delay(job.attempts, settings.retry_base_delay_s, settings.retry_max_delay_s)
            return "retrying", error.reason, timedelta(seconds=max(delay, 1.0))
        return "sent", reply, None


async def _complete_even_if_cancelled(operation: Coroutine[Any, Any, T]) -> T:
    """Run ``operation`` to its end even if the caller is cancelled meanwhile; then re-raise the
    cancellation. Used from a message's claim to its recorded outcome, so a shutdown never leaves a
    message in ``sending`` that did not have to be."""
    task = asyncio.ensure_future(operation)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
