"""Double opt-in: a lead that must confirm its address by email enrolls only once it has confirmed.

Plain functions over a connection, inside the caller's transaction (no web framework):

* :func:`must_confirm` — whether ``DOUBLE_OPT_IN`` asks a new lead from this kind of caller to confirm.
* :func:`request_confirmation` — for a new lead: queue its one confirmation email (a
  ``confirmation_emails`` row and its ``lead.confirmation_requested`` command in the outbox, one
  transaction) when the setting asks it or a Sequence with ``spec.doubleOptIn`` matches the lead.
* :func:`resend_confirmation_if_cooled_down` — for a resubmitted, still unconfirmed lead: another email,
  but never sooner than the cool-down after the last one.
* :func:`confirm_lead` — the ``POST /confirm/{token}``: record the confirmation (time, IP, user agent) in
  the lead's consent record and queue ``lead.accepted`` again, so the scheduler enrolls the lead into the
  Sequences it was held from (committed here before anything is published: the outbox).

Where the record lives: ``leads.confirmed_at``, ``leads.confirmed_ip``, ``leads.confirmed_user_agent``
(the consent record's columns), ``leads.confirmation_sent_at`` (the last email queued) and one
``confirmation_emails`` row per email (status, queued_at, sent_at).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Literal

from proto.messages import ConfirmationRequested, LeadAccepted, confirmed_lead_message_id
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.outbox import enqueue_message

Policy = Literal["public-forms", "all", "off"]
USER_AGENT_MAX = 512


@dataclass(frozen=True)
class ConfirmationRules:
    """How intake handles confirmations: the resend cool-down, how long a link works, and the topic
    the confirmation email commands (``email.dispatch``) and ``lead.accepted`` go to."""

    cooldown: timedelta
    expiry: timedelta
    dispatch_topic: str
    leads_topic: str


class Confirmation(Enum):
    """What a confirmation link finds."""

    PENDING = "pending"  # waiting for the person's POST
    CONFIRMED_NOW = "confirmed_now"  # this request confirmed it
    ALREADY_CONFIRMED = "already_confirmed"
    EXPIRED = "expired"  # older than CONFIRMATION_EXPIRY_HOURS (and purged soon)
    UNKNOWN = "unknown"  # erased, purged, or never asked to confirm


def must_confirm(policy: Policy, *, public_form: bool) -> bool:
    """Whether ``DOUBLE_OPT_IN`` (``policy``) asks a new lead to confirm before enrolling anywhere."""
    return policy == "all" or (policy == "public-forms" and public_form)


# Live Sequences whose trigger matches the lead and which ask for double opt-in (the scheduler's own
# matching rule, services/scheduler/enrollment.py).
_MATCHES_DOUBLE_OPT_IN_SEQUENCE = """SELECT EXISTS (
    SELECT 1 FROM leads l
    JOIN sequence_revisions r ON (r.trigger_all OR l.source = ANY (r.trigger_sources) OR l.tags && r.trigger_tags)
         AND (l.consent_marketing OR NOT r.require_consent) AND r.double_opt_in
    JOIN sequences s ON s.id = r.sequence_id AND s.current_revision = r.revision AND s.deleted_at IS NULL
    WHERE l.id = %s) AS matches"""


async def request_confirmation(
    conn: Connection, lead_id: uuid.UUID, *, required: bool, rules: ConfirmationRules
) -> bool:
    """For the new lead ``lead_id`` (already inserted): mark it ``required`` to confirm, and queue its
    confirmation email if it must confirm or a double opt-in Sequence matches it; returns whether an
    email was queued. Runs in the caller's transaction."""
    if required:
        await conn.execute("UPDATE leads SET confirmation_required = true WHERE id = %s", (lead_id,))
    else:
        cursor = await conn.execute(_MATCHES_DOUBLE_OPT_IN_SEQUENCE, (lead_id,))
        row = await cursor.fetchone()
        if row is None or not row["matches"]:
            return False
    await conn.execute("UPDATE leads SET confirmation_sent_at = now() WHERE id = %s", (lead_id,))
    await _queue_email(conn, lead_id, rules)
    return True


async def resend_confirmation_if_cooled_down(conn: Connection, lead_id: uuid.UUID, *, rules: ConfirmationRules) -> bool:
    """For a resubmitted lead: if it still waits for its confirmation and the last email is older than
    the cool-down, queue another; returns whether one was queued. Concurrent resubmissions serialize on
    the lead's row, so one cool-down period gets one email."""
    cursor = await conn.execute(
        """UPDATE leads SET confirmation_sent_at = now()
           WHERE id = %s AND confirmed_at IS NULL AND confirmation_sent_at IS NOT NULL
             AND confirmation_sent_at <= now() - %s AND created_at > now() - %s
           RETURNING id""",
        (lead_id, rules.cooldown, rules.expiry),
    )
    if await cursor.fetchone() is None:
        return False
    await _queue_email(conn, lead_id, rules)
    return True


async def _queue_email(conn: Connection, lead_id: uuid.UUID, rules: ConfirmationRules) -> uuid.UUID:
    email_id = uuid.uuid4()
    await conn.execute("INSERT INTO confirmation_emails (id, lead_id) VALUES (%s, %s)", (email_id, lead_id))
    command = ConfirmationRequested(id=email_id, occurred_at=utcnow(), lead_id=lead_id)
    await enqueue_message(conn, rules.dispatch_topic, str(lead_id), command)
    return email_id


async def confirmation_state(conn: Connection, lead_id: uuid.UUID, *, expiry: timedelta) -> Confirmation:
    """What the confirmation link of ``lead_id`` finds now (changes nothing: a GET, or a mail scanner)."""
    cursor = await conn.execute(
        """SELECT confirmed_at IS NOT NULL AS confirmed, created_at <= now() - %s AS expired,
                  confirmation_sent_at IS NOT NULL AS asked
           FROM leads WHERE id = %s""",
        (expiry, lead_id),
    )
    row = await cursor.fetchone()
    if row is None or not row["asked"]:
        return Confirmation.UNKNOWN
    if row["confirmed"]:
        return Confirmation.ALREADY_CONFIRMED
    if row["expired"]:
        return Confirmation.EXPIRED
    return Confirmation.PENDING


async def confirm_lead(
    conn: Connection, lead_id: uuid.UUID, *, ip: str | None, user_agent: str | None, rules: ConfirmationRules
) -> Confirmation:
    """Confirm ``lead_id`` if it waits for it (not expired): record time, IP and user agent in its
    consent record and queue ``lead.accepted`` so it enrolls. Idempotent: a second POST changes nothing
    and answers :attr:`Confirmation.ALREADY_CONFIRMED`. Runs in the caller's transaction."""
    cursor = await conn.execute(
        """UPDATE leads
           SET confirmed_at = now(), confirmed_ip = %s, confirmed_user_agent = %s,
               -- handled again by the scheduler; retry-failed re-publishes if this lead.accepted is lost
               enrolled_at = NULL, republished_at = NULL
           WHERE id = %s AND confirmed_at IS NULL AND confirmation_sent_at IS NOT NULL AND created_at > now() - %s
           RETURNING source, tags""",
        (ip, (user_agent or "")[:USER_AGENT_MAX] or None, lead_id, rules.expiry),
    )
    row = await cursor.fetchone()
    if row is None:
        return await confirmation_state(conn, lead_id, expiry=rules.expiry)
    accepted = LeadAccepted(
        id=confirmed_lead_message_id(lead_id),
        occurred_at=utcnow(),
        lead_id=lead_id,
        source=str(row["source"]),
        tags=list(row["tags"]),  # type: ignore[call-overload]
    )
    await enqueue_message(conn, rules.leads_topic, str(lead_id), accepted)
    return Confirmation.CONFIRMED_NOW
