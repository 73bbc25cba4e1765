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

from services.common import metrics
from services.common.coalesce import Coalescer
from services.common.compose import ComposeSettings, MessageIdentity, StepContent, compose_email
from services.common.config import DispatcherSettings
from services.common.db import UNAVAILABLE_ERRORS, Connection, transaction
from services.common.events import MessageRef
from services.common.message_lifecycle import transitions as lifecycle
from services.common.message_lifecycle.announcements import Attempt
from services.common.message_lifecycle.states import CLAIM, Status, decide_after_failure
from services.common.redaction import known_values_of, redact_addresses
from services.common.retry import retry_async
from services.common.suppressions import LEAD_IS_SUPPRESSED_SQL
from services.common.templates import RenderError, TemplateLead
from services.dispatcher.rate import SharedRateLimiter
from services.dispatcher.smtp import SendError, SmtpConnection, SmtpPool

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    sequence_namespace: str
    step_name: str
    subject: str
    html: str | None
    text: str | None
    from_email: str | None
    from_name: str | None
    suppressed: bool
    life: int = 0  # set by the claim (messages.replays)
    claimed_at: datetime | None = None  # set by the claim

    def attempt(self) -> Attempt:
        """The attempt this job is on, as the message lifecycle names it."""
        ref = MessageRef(
            self.message_id, self.lead_id, self.sequence_id, self.revision, self.step_position, self.step_name
        )
        return Attempt(ref, self.enrollment_id, self.life, self.attempts)


_LOAD_JOBS = f"""SELECT m.id, m.enrollment_id, m.lead_id, m.sequence_id, m.revision, m.step_position, m.attempts,
          l.email, l.first_name, l.last_name, l.source,
          s.name AS sequence_name, s.namespace AS sequence_namespace,
          st.name AS step_name, COALESCE(v.subject, st.subject) AS subject,
          COALESCE(v.html, st.html) AS html, COALESCE(v.text, st.text) AS text,
          r.spec -> 'from' ->> 'email' AS from_email, r.spec -> 'from' ->> 'name' AS from_name,
          ({LEAD_IS_SUPPRESSED_SQL}
           OR EXISTS (SELECT 1 FROM sequence_unsubscribes u
                      WHERE u.email_hash = l.email_hash AND u.sequence_id = m.sequence_id)) AS suppressed
   FROM messages m
   JOIN leads l ON l.id = m.lead_id
   JOIN sequences s ON s.id = m.sequence_id
   JOIN sequence_revisions r ON r.sequence_id = m.sequence_id AND r.revision = m.revision
   JOIN sequence_steps st
     ON st.sequence_id = m.sequence_id AND st.revision = m.revision AND st.position = m.step_position
   -- The A/B variant the scheduler chose for this lead overrides the step's parts.
   LEFT JOIN sequence_step_variants v
     ON v.sequence_id = m.sequence_id AND v.revision = m.revision AND v.position = m.step_position
        AND v.name = m.variant
   WHERE m.id = ANY(%s)
     AND m.status = ANY(%s)
     AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= now())"""  # noqa: S608 - constant fragments only


async def load_jobs(conn: Connection, message_ids: Iterable[uuid.UUID]) -> list[SendJob]:
    """Read what is needed to send each message that may be sent now (queued, or a retry that is due);
    others (sent, sending, dead, skipped, a retry not yet due) are not returned. Changes nothing: each
    message is claimed (:func:`write_group`) only when an SMTP connection is ready for it."""
    cursor = await conn.execute(
        _LOAD_JOBS,
        (list(message_ids), CLAIM.source_names),
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
            sequence_namespace=row["sequence_namespace"],  # type: ignore[arg-type]
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


async def write_group(
    conn: Connection,
    outcomes: Sequence[lifecycle.Outcome],
    jobs: Sequence[SendJob],
    *,
    events_topic: str,
    dlq_topic: str,
) -> list[SendJob | None]:
    """Record ``outcomes`` and claim ``jobs`` in one statement (:func:`lifecycle.record_and_claim`);
    returns one result per job: the claimed job, or None if it may not be sent now."""
    claimed, _ = await lifecycle.record_and_claim(
        conn,
        outcomes,
        [job.message_id for job in jobs],
        events_topic=events_topic,
        dlq_topic=dlq_topic,
    )
    return [
        replace(job, attempts=c.attempt, life=c.life, claimed_at=c.claimed_at)
        if (c := claimed.get(job.message_id)) is not None
        else None
        for job in jobs
    ]


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
        self._ledger: Coalescer[SendJob | lifecycle.Outcome, SendJob | None] = Coalescer(
            self._write_group, on_idle=self._release_connection
        )
        self._conn: Connection | None = None  # held by the ledger while it has work
        self._compose_settings = ComposeSettings.of(settings, settings.hmac_secret)  # the same for every message

    async def _write_group(self, items: Sequence[SendJob | lifecycle.Outcome]) -> list[SendJob | None]:
        """Record the outcomes, then claim the jobs, in one transaction; one result per item (the
        claimed job or None for a claim, None for an outcome)."""
        settings = self._settings
        outcomes = [item for item in items if isinstance(item, lifecycle.Outcome)]
        jobs = [item for item in items if isinstance(item, SendJob)]

        async def write() -> list[SendJob | None]:
            conn = self._conn or await self._checkout()
            try:
                # One statement in autocommit mode: atomic, and one round trip.
                claimed = await write_group(
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
            return await complete_even_if_cancelled(self._finish_unsent(job, Status.SKIPPED, "recipient is suppressed"))
        try:
            sender, data = self._build(job)
        except RenderError as error:
            return await complete_even_if_cancelled(self._finish_unsent(job, Status.DEAD, str(error)))
        # Waiting for a permit or a connection is cancellable: nothing is claimed yet. From here on the
        # task owns the connection and releases it.
        await self._rate.acquire()
        connection = await self._smtp.acquire()
        return await complete_even_if_cancelled(self._claim_send_record(job, connection, sender, data))

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
        await self._ledger.submit(lifecycle.Outcome(claimed.attempt(), status, detail, retry_in))
        return status

    async def _finish_unsent(self, job: SendJob, status: Status, detail: str) -> str | None:
        claimed = await self._ledger.submit(job)
        if claimed is None:
            return None
        await self._ledger.submit(lifecycle.Outcome(claimed.attempt(), status, _redacted_for(job, detail)))
        return status

    def _build(self, job: SendJob) -> tuple[str, bytes]:
        composed = compose_email(
            StepContent(job.sequence_name, job.step_name, job.subject, job.html, job.text, job.sequence_namespace),
            TemplateLead(job.to_email, job.first_name, job.last_name, job.source),
            MessageIdentity(job.message_id, job.from_email, job.from_name),
            self._compose_settings,
        )
        return composed.sender, composed.data

    async def _send(
        self, job: SendJob, connection: SmtpConnection, sender: str, data: bytes
    ) -> tuple[Status, str, timedelta | None]:
        settings = self._settings
        try:
            with metrics.SMTP_SECONDS.time():
                reply = await self._smtp.send(connection, sender, job.to_email, data)
        except SendError as error:
            decision = decide_after_failure(
                error.reason,
                permanent=error.permanent,
                attempts=job.attempts,
                max_attempts=settings.max_attempts,
                base_delay_s=settings.retry_base_delay_s,
                max_delay_s=settings.retry_max_delay_s,
            )
            return decision.status, _redacted_for(job, decision.reason), decision.retry_in
        return Status.SENT, _redacted_for(job, reply), None


def _redacted_for(job: SendJob, text: str) -> str:
    """An SMTP reply or error without the recipient's address, its local part or names: these texts are
    stored (messages, events, dead letters) and published, and erasure must leave nothing behind."""
    return redact_addresses(text, known_values_of(job.to_email, job.first_name, job.last_name))


async def complete_even_if_cancelled(operation: Coroutine[Any, Any, T]) -> T:
    """Run ``operation`` to its end even if the caller is cancelled meanwhile; then re-raise the
    cancellation. Used from a message's claim to its recorded outcome, so a shutdown never leaves a
    message in ``sending`` that did not have to be."""
    task = asyncio.ensure_future(operation)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
