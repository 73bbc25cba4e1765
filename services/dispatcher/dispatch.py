"""The life of one message: claim it (``sending`` is committed before the SMTP call), send it,
record the outcome. Idempotent on the message id: a redelivered command for a message that is sent,
sending, dead or not yet due for retry sends nothing.

The one honest gap: a crash after the provider accepted the message and before ``sent`` is committed
leaves it in ``sending``; the reconcile job finds it by age, so the duplicate window is visible and
counted, never silent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import psycopg_pool

from proto.messages import EmailDeadLettered, EmailEvent
from services.common import metrics
from services.common.clock import utcnow
from services.common.config import DispatcherSettings
from services.common.db import UNAVAILABLE_ERRORS, Connection, transaction
from services.common.outbox import enqueue_message
from services.common.retry import backoff_delay, retry_async
from services.dispatcher.mail import build_message
from services.dispatcher.render import RenderError, render_step
from services.dispatcher.smtp import SendError, SmtpTransport


@dataclass(frozen=True)
class SendJob:
    """Everything needed to send one claimed message."""

    message_id: uuid.UUID
    enrollment_id: uuid.UUID
    lead_id: uuid.UUID
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
    suppressed: bool
    # The Sequence's `from` override, stored with its revision; None means the platform's sender.
    from_email: str | None = None
    from_name: str | None = None


async def claim_message(conn: Connection, message_id: uuid.UUID) -> SendJob | None:
    """Move the message to ``sending`` and count the attempt, if it may be sent now; else None."""
    cursor = await conn.execute(
        """UPDATE messages m
           SET status = 'sending', attempts = m.attempts + 1, next_attempt_at = NULL,
               sending_at = now(), updated_at = now()
           FROM leads l, sequences s, sequence_steps st, sequence_revisions r
           WHERE m.id = %s
             AND m.status IN ('queued', 'retrying')
             AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= now())
             AND l.id = m.lead_id
             AND s.id = m.sequence_id
             AND st.sequence_id = m.sequence_id AND st.revision = m.revision AND st.position = m.step_position
             AND r.sequence_id = m.sequence_id AND r.revision = m.revision
           RETURNING m.id, m.enrollment_id, m.lead_id, m.attempts, l.email, l.first_name, l.last_name,
                     l.source, s.name AS sequence_name, st.name AS step_name, st.subject, st.html, st.text,
                     r.from_email, r.from_name,
                     EXISTS (SELECT 1 FROM suppressions x
                             WHERE x.email_hash = encode(sha256(convert_to(l.email_normalized, 'UTF8')), 'hex'))
                         AS suppressed""",
        (message_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    return SendJob(
        message_id=row["id"],  # type: ignore[arg-type]
        enrollment_id=row["enrollment_id"],  # type: ignore[arg-type]
        lead_id=row["lead_id"],  # type: ignore[arg-type]
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
        suppressed=row["suppressed"],  # type: ignore[arg-type]
        from_email=row["from_email"],  # type: ignore[arg-type]
        from_name=row["from_name"],  # type: ignore[arg-type]
    )


async def record_outcome(
    conn: Connection,
    job: SendJob,
    *,
    status: str,
    detail: str,
    events_topic: str,
    retry_in: timedelta | None = None,
) -> None:
    """Write the result of an attempt (only if the message is still ``sending``) and announce it."""
    result = await conn.execute(
        """UPDATE messages
           SET status = %(status)s,
               sent_at = CASE WHEN %(status)s = 'sent' THEN now() END,
               next_attempt_at = CASE WHEN %(status)s = 'retrying' THEN now() + %(retry_in)s END,
               smtp_response = CASE WHEN %(status)s = 'sent' THEN %(detail)s ELSE smtp_response END,
               last_error = CASE WHEN %(status)s = 'sent' THEN last_error ELSE %(detail)s END,
               updated_at = now()
           WHERE id = %(id)s AND status = 'sending'""",
        {"status": status, "detail": detail[:2000], "retry_in": retry_in, "id": job.message_id},
    )
    if not result.rowcount:
        return
    await conn.execute(
        "INSERT INTO events (message_id, lead_id, type, detail) VALUES (%s, %s, %s, %s)",
        (job.message_id, job.lead_id, status, detail[:2000]),
    )
    event = EmailEvent(
        id=uuid.uuid5(job.message_id, f"{status}/{job.attempts}"),
        occurred_at=utcnow(),
        message_id=job.message_id,
        event=status,
        detail=detail[:500],
    )
    await enqueue_message(conn, events_topic, str(job.message_id), event)


async def dead_letter(conn: Connection, job: SendJob, reason: str, dlq_topic: str) -> None:
    """Announce on the dead-letter topic that the message will not be delivered."""
    letter = EmailDeadLettered(
        id=uuid.uuid5(job.message_id, "dead"),
        occurred_at=utcnow(),
        message_id=job.message_id,
        enrollment_id=job.enrollment_id,
        attempts=job.attempts,
        reason=reason[:2000],
    )
    await enqueue_message(conn, dlq_topic, str(job.message_id), letter)


class Dispatcher:
    """Sends the messages named by ``email.dispatch`` commands."""

    def __init__(
        self,
        settings: DispatcherSettings,
        pool: psycopg_pool.AsyncConnectionPool[Connection],
        transport: SmtpTransport,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._transport = transport

    async def dispatch(self, message_id: uuid.UUID) -> str | None:
        """Send the message if it may be sent now; returns the status it ended in, or None if skipped."""
        settings = self._settings
        async with transaction(self._pool) as conn:
            job = await claim_message(conn, message_id)
        if job is None:
            return None
        if job.suppressed:
            status, detail, retry_in = "skipped", "recipient is suppressed", None
        else:
            status, detail, retry_in = await self._send(job)

        async def record() -> None:
            async with transaction(self._pool) as conn:
                await record_outcome(
                    conn,
                    job,
                    status=status,
                    detail=detail,
                    events_topic=settings.topic_email_events,
                    retry_in=retry_in,
                )
                if status == "dead":
                    await dead_letter(conn, job, detail, settings.topic_email_dlq)

        # The email may already be with the provider: try hard to record it, because until then the
        # message sits in the duplicate window.
        await retry_async(record, retry_on=UNAVAILABLE_ERRORS, attempts=8, max_delay_s=5.0, what="record outcome")
        metrics.EMAILS.labels(status).inc()
        return status

    async def _send(self, job: SendJob) -> tuple[str, str, timedelta | None]:
        settings = self._settings
        context = {
            "lead": {
                "email": job.to_email,
                "first_name": job.first_name,
                "last_name": job.last_name,
                "source": job.source,
            },
            "sequence": {"name": job.sequence_name, "step": job.step_name},
        }
        try:
            rendered = render_step(job.subject, job.html, job.text, context)
        except RenderError as error:
            return "dead", str(error), None
        message = build_message(
            message_id=job.message_id,
            from_email=job.from_email or settings.from_email,
            from_name=job.from_name or settings.from_name,
            to_email=job.to_email,
            to_name=" ".join(filter(None, [job.first_name, job.last_name])) or None,
            rendered=rendered,
        )
        try:
            with metrics.SMTP_SECONDS.time():
                reply = await self._transport.send(message)
        except SendError as error:
            if error.permanent or job.attempts >= settings.max_attempts:
                suffix = "" if error.permanent else f" (after {job.attempts} attempts)"
                return "dead", error.reason + suffix, None
            delay = backoff_delay(job.attempts, settings.retry_base_delay_s, settings.retry_max_delay_s)
            return "retrying", error.reason, timedelta(seconds=max(delay, 1.0))
        return "sent", reply, None
