"""Sending double opt-in confirmation emails (``lead.confirmation_requested`` on ``email.dispatch``).

The same send path as a Sequence's messages: the dispatcher's SMTP pool, its shared rate, its
suppression rule, its Message-ID and idempotency header (the email's id). Idempotent on the email's
id: an email is claimed (``sending`` committed) only from ``queued`` and only once a rate permit and an
SMTP connection are in hand, so a redelivered command sends nothing twice. A suppressed address, or a
lead that has confirmed meanwhile, gets nothing (``skipped``). A failed send is recorded ``failed``
with its kind only (no provider text, which may quote the address) and not retried: the person can
submit the form again, which sends a new email after the cool-down.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg_pool

from services.common import metrics
from services.common.config import DispatcherSettings
from services.common.confirmation_email import ConfirmationTemplate, compose_confirmation_email
from services.common.db import Connection, transaction
from services.common.redaction import redact_addresses
from services.common.suppressions import LEAD_IS_SUPPRESSED_SQL
from services.common.templates import RenderError, TemplateLead
from services.dispatcher.dispatch import complete_even_if_cancelled
from services.dispatcher.rate import SharedRateLimiter
from services.dispatcher.smtp import SendError, SmtpConnection, SmtpPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfirmationJob:
    """One queued confirmation email and what is needed to send it."""

    email_id: uuid.UUID
    lead_id: uuid.UUID
    lead: TemplateLead
    # Why it must not be sent, if it must not: the address is suppressed, or the lead already confirmed.
    skip_reason: str | None


async def load_confirmations(conn: Connection, email_ids: Iterable[uuid.UUID]) -> list[ConfirmationJob]:
    """The still ``queued`` emails among ``email_ids`` with their leads (others are not returned)."""
    cursor = await conn.execute(
        f"""SELECT c.id, c.lead_id, l.email, l.first_name, l.last_name, l.source,
                  l.confirmed_at IS NOT NULL AS confirmed,
                  {LEAD_IS_SUPPRESSED_SQL} AS suppressed
           FROM confirmation_emails c JOIN leads l ON l.id = c.lead_id
           WHERE c.id = ANY(%s) AND c.status = 'queued'""",  # noqa: S608 - a constant fragment, no input
        (list(email_ids),),
    )
    return [
        ConfirmationJob(
            email_id=row["id"],  # type: ignore[arg-type]
            lead_id=row["lead_id"],  # type: ignore[arg-type]
            lead=TemplateLead(row["email"], row["first_name"], row["last_name"], row["source"]),  # type: ignore[arg-type]
            skip_reason=(
                "recipient is suppressed" if row["suppressed"] else "already confirmed" if row["confirmed"] else None
            ),
        )
        for row in await cursor.fetchall()
    ]


async def claim_confirmation(conn: Connection, email_id: uuid.UUID) -> bool:
    """Move the email from ``queued`` to ``sending``; False if another delivery of the command won."""
    cursor = await conn.execute(
        """UPDATE confirmation_emails SET status = 'sending', sending_at = now()
           WHERE id = %s AND status = 'queued' RETURNING id""",
        (email_id,),
    )
    return await cursor.fetchone() is not None


async def record_confirmation(conn: Connection, email_id: uuid.UUID, status: str, detail: str, *, source: str) -> None:
    """Record the outcome of the email (``sent``, ``failed``, ``skipped``) if it is still in ``source``."""
    await conn.execute(
        """UPDATE confirmation_emails
           SET status = %s, detail = %s, sent_at = CASE WHEN %s = 'sent' THEN now() END
           WHERE id = %s AND status = %s""",
        # An SMTP reply may quote the recipient: stored texts never keep an address (docs/security.md).
        (status, redact_addresses(detail)[:1000], status, email_id, source),
    )


class ConfirmationSender:
    """Sends the confirmation emails named by ``lead.confirmation_requested`` commands."""

    def __init__(
        self,
        settings: DispatcherSettings,
        pool: psycopg_pool.AsyncConnectionPool[Connection],
        smtp: SmtpPool,
        rate: SharedRateLimiter,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._smtp = smtp
        self._rate = rate
        # Read and checked once, at start: a broken template is a start-up failure, not a dead email.
        self._template = ConfirmationTemplate.load(settings.confirmation_subject, settings.confirmation_template_file)
        header = settings.smtp_idempotency_header
        self._idempotency_header = None if header.lower() == "none" else header

    async def send_batch(self, email_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Send every still queued email of ``email_ids`` concurrently; returns the status each ended in."""
        if not email_ids:
            return {}
        async with transaction(self._pool) as conn:
            jobs = await load_confirmations(conn, dict.fromkeys(email_ids))
        statuses = await asyncio.gather(*(self._process(job) for job in jobs))
        return {job.email_id: status for job, status in zip(jobs, statuses, strict=True) if status is not None}

    async def _process(self, job: ConfirmationJob) -> str | None:
        if job.skip_reason is not None:
            async with transaction(self._pool) as conn:
                await record_confirmation(conn, job.email_id, "skipped", job.skip_reason, source="queued")
            metrics.CONFIRMATION_EMAILS.labels("skipped").inc()
            return "skipped"
        settings = self._settings
        try:
            data = compose_confirmation_email(
                self._template,
                job.lead,
                email_id=job.email_id,
                lead_id=job.lead_id,
                public_base_url=settings.public_base_url,
                hmac_secret=settings.hmac_secret,
                from_email=settings.from_email,
                from_name=settings.from_name,
                idempotency_header=self._idempotency_header,
            )
        except RenderError as error:
            log.warning(
                "confirmation email does not render", extra={"email_id": str(job.email_id), "error": str(error)}
            )
            async with transaction(self._pool) as conn:
                await record_confirmation(conn, job.email_id, "failed", "template does not render", source="queued")
            return "failed"
        await self._rate.acquire()
        connection = await self._smtp.acquire()
        # From the claim to the recorded outcome the email is one unit: a shutdown waits for it (the
        # dispatcher's own rule for messages, services.dispatcher.dispatch).
        return await complete_even_if_cancelled(self._claim_send_record(job, connection, data))

    async def _claim_send_record(self, job: ConfirmationJob, connection: SmtpConnection, data: bytes) -> str | None:
        try:
            async with transaction(self._pool) as conn:
                if not await claim_confirmation(conn, job.email_id):
                    return None
            try:
                await self._smtp.send(connection, self._settings.from_email, job.lead.email, data)
            except SendError as error:
                status, detail = "failed", "permanent failure" if error.permanent else "temporary failure"
            else:
                status, detail = "sent", ""
        finally:
            self._smtp.release(connection)
        async with transaction(self._pool) as conn:
            await record_confirmation(conn, job.email_id, status, detail, source="sending")
        metrics.CONFIRMATION_EMAILS.labels(status).inc()
        return status
