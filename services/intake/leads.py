"""Accepting a lead: one transaction that claims the duplicate window, stores the lead and queues
``lead.accepted`` in the outbox."""

from __future__ import annotations

import uuid
from datetime import timedelta

from proto.http import LeadReceipt, LeadSubmission
from proto.messages import LeadAccepted
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.outbox import enqueue_message


async def accept_lead(
    conn: Connection,
    lead: LeadSubmission,
    email_key: str,
    *,
    duplicate_window: timedelta,
    topic: str,
) -> LeadReceipt:
    """Store ``lead`` unless the same address was accepted within ``duplicate_window``.

    Runs inside the caller's transaction. Concurrency-safe: simultaneous submissions of one address
    serialize on its ``lead_identities`` row, so exactly one creates a lead and the others get its id.
    """
    lead_id = uuid.uuid4()
    cursor = await conn.execute(
        """INSERT INTO lead_identities AS li (email_normalized, lead_id, accepted_at)
           VALUES (%(key)s, %(lead_id)s, now())
           ON CONFLICT (email_normalized) DO UPDATE
               SET lead_id = EXCLUDED.lead_id, accepted_at = EXCLUDED.accepted_at
               WHERE li.accepted_at <= now() - %(window)s
           RETURNING lead_id""",
        {"key": email_key, "lead_id": lead_id, "window": duplicate_window},
    )
    if await cursor.fetchone() is None:
        cursor = await conn.execute("SELECT lead_id FROM lead_identities WHERE email_normalized = %s", (email_key,))
        row = await cursor.fetchone()
        assert row is not None, "the conflicting identity row exists: it blocked our insert"
        return LeadReceipt(id=row["lead_id"], duplicate=True)  # type: ignore[arg-type]

    await conn.execute(
        """INSERT INTO leads (id, email, email_normalized, first_name, last_name, source, tags,
                              consent_marketing, consent_text, consent_captured_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            lead_id,
            lead.email,
            email_key,
            lead.first_name,
            lead.last_name,
            lead.source,
            lead.tags,
            lead.consent.marketing,
            lead.consent.text,
            lead.consent.captured_at,
        ),
    )
    message = LeadAccepted(id=lead_id, occurred_at=utcnow(), lead_id=lead_id, source=lead.source, tags=lead.tags)
    await enqueue_message(conn, topic, str(lead_id), message)
    return LeadReceipt(id=lead_id, duplicate=False)
