"""GDPR erasure: remove everything personal about an address, keep only a hashed suppression.

Erasing deletes every lead of the address (and, by cascade, its duplicate-window identity, enrollments,
messages, events and idempotency keys), so no step can be sent any more; what stays is a
``suppressions`` row keyed by the SHA-256 of the normalized address with reason ``erased``, so the
address is never mailed again. Erasing twice, or erasing what never existed, is a no-op.
"""

from __future__ import annotations

import uuid

from services.common.db import Connection
from services.common.identity import email_hash


async def erase_address(conn: Connection, email_key: str) -> int:
    """Erase every lead of the normalized address ``email_key`` and suppress it; returns leads erased."""
    await conn.execute(
        """INSERT INTO suppressions (email_hash, reason) VALUES (%s, 'erased')
           ON CONFLICT (email_hash) DO UPDATE SET reason = 'erased'""",
        (email_hash(email_key),),
    )
    cursor = await conn.execute("DELETE FROM leads WHERE email_normalized = %s RETURNING id", (email_key,))
    erased = len(await cursor.fetchall())
    # Identities are removed with their lead by cascade; this catches one left pointing elsewhere.
    await conn.execute("DELETE FROM lead_identities WHERE email_normalized = %s", (email_key,))
    return erased


async def erase_lead(conn: Connection, lead_id: uuid.UUID) -> int:
    """Erase the person behind ``lead_id``: every lead of its address. Unknown ids erase nothing."""
    cursor = await conn.execute("SELECT email_normalized FROM leads WHERE id = %s FOR UPDATE", (lead_id,))
    row = await cursor.fetchone()
    if row is None:
        return 0
    return await erase_address(conn, str(row["email_normalized"]))
