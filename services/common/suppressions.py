"""Suppressions: addresses never to be mailed again, keyed by the keyed hash of the normalized address
(``services.common.identity.email_hash``: HMAC-SHA256 under ``SUPPRESSION_HASH_KEY``).

Written by intake (one-click unsubscribes, bounce and complaint webhooks) and announced on
``leads.suppressed`` so the scheduler cancels every active enrollment of the address; the dispatcher
checks the table before every send, so even a message already queued is skipped.
"""

from __future__ import annotations

import uuid

from proto.messages import LeadSuppressed
from services.common import metrics
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.outbox import enqueue_message
from services.common.redaction import redact_addresses

SUPPRESSION_NAMESPACE = uuid.UUID("3f6d2a9e-1c4b-4e7a-b8d5-6a2f0e9c1b47")

# Whether the lead ``l`` is suppressed, for a query's WHERE or SELECT list. It matches the keyed hash
# and, for suppressions written before migration 0010 (``keyed = false``, whose address may be gone so
# they cannot be rehashed), the unkeyed SHA-256 of the lead's address computed on the spot, never stored.
LEAD_IS_SUPPRESSED_SQL = (
    "EXISTS (SELECT 1 FROM suppressions x WHERE x.email_hash = l.email_hash"
    " OR (x.email_hash = encode(sha256(convert_to(l.email_normalized, 'UTF8')), 'hex') AND NOT x.keyed))"
)


async def suppress_address(conn: Connection, email_hash: str, *, reason: str, detail: str, topic: str) -> bool:
    """Suppress the address (idempotent: the first reason stays) and announce it on ``topic``;
    returns whether it was newly suppressed. ``email_hash`` is the keyed hash; addresses in ``detail``
    are redacted (provider diagnostics quote them)."""
    inserted = await conn.execute(
        """INSERT INTO suppressions (email_hash, reason, detail, keyed) VALUES (%s, %s, %s, true)
           ON CONFLICT (email_hash) DO NOTHING""",
        (email_hash, reason, redact_addresses(detail)[:500]),
    )
    if not inserted.rowcount:
        return False
    message = LeadSuppressed(
        id=uuid.uuid5(SUPPRESSION_NAMESPACE, email_hash), occurred_at=utcnow(), email_hash=email_hash, reason=reason
    )
    await enqueue_message(conn, topic, email_hash, message)
    metrics.SUPPRESSIONS.labels(reason).inc()
    return True


async def is_suppressed(conn: Connection, email_hash: str) -> bool:
    cursor = await conn.execute("SELECT 1 FROM suppressions WHERE email_hash = %s", (email_hash,))
    return await cursor.fetchone() is not None
