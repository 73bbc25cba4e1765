"""Export: all data held for an address, as one document (GDPR Art. 15 access, Art. 20 portability).

Every lead of the normalized address with its record (``GET /v1/leads/{id}``) and its whole timeline,
plus the address's suppression if there is one. After an erasure there is no lead: the export holds the
address the caller gave, no leads, and the ``erased`` suppression (which names no one by itself).
"""

from __future__ import annotations

from proto.http import AddressExport, ExportedLead, SuppressionView
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.identity import email_hash, legacy_email_hash
from services.intake.lookup import fetch_lead
from services.intake.timeline import full_timeline


async def export_address(conn: Connection, email_key: str, *, hash_key: str) -> AddressExport:
    """Everything stored about the normalized address ``email_key`` (``hash_key``: SUPPRESSION_HASH_KEY)."""
    cursor = await conn.execute(
        "SELECT id FROM leads WHERE email_normalized = %s ORDER BY created_at, id", (email_key,)
    )
    leads = []
    for row in await cursor.fetchall():
        lead = await fetch_lead(conn, row["id"])  # type: ignore[arg-type]
        if lead is not None:
            leads.append(ExportedLead(lead=lead, timeline=await full_timeline(conn, lead.id)))
    cursor = await conn.execute(
        """SELECT reason, detail, created_at FROM suppressions
           WHERE email_hash = %s OR (email_hash = %s AND NOT keyed)
           ORDER BY keyed DESC LIMIT 1""",
        (email_hash(email_key, hash_key), legacy_email_hash(email_key)),
    )
    found = await cursor.fetchone()
    suppression = (
        SuppressionView(
            reason=str(found["reason"]),
            detail=str(found["detail"]),
            created_at=found["created_at"],  # type: ignore[arg-type]
        )
        if found
        else None
    )
    return AddressExport(email=email_key, exported_at=utcnow(), leads=leads, suppression=suppression)
