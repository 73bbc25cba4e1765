"""Reading a lead back: ``GET /v1/leads/{id}`` with its consent record, enrollments and messages."""

from __future__ import annotations

import uuid

import msgspec

from proto.http import ConsentRecord, EnrollmentView, LeadView, MessageView, Utm
from services.common.db import Connection


async def fetch_lead(conn: Connection, lead_id: uuid.UUID) -> LeadView | None:
    """The lead as stored, or None if there is no such lead (never was, or erased)."""
    cursor = await conn.execute(
        """SELECT id, email, source, first_name, last_name, phone, tags, utm, locale, timezone, metadata,
                  consent_marketing, consent_text, consent_captured_at, consent_recorded_at,
                  host(consent_ip) AS consent_ip, consent_user_agent, created_at,
                  confirmed_at, host(confirmed_ip) AS confirmed_ip, confirmed_user_agent
           FROM leads WHERE id = %s""",
        (lead_id,),
    )
    lead = await cursor.fetchone()
    if lead is None:
        return None
    cursor = await conn.execute(
        """SELECT e.id, s.namespace || '/' || s.name AS sequence, e.revision, e.status, e.next_step,
                  e.next_run_at, e.created_at
           FROM enrollments e JOIN sequences s ON s.id = e.sequence_id
           WHERE e.lead_id = %s ORDER BY e.created_at, e.id""",
        (lead_id,),
    )
    enrollments = await cursor.fetchall()
    cursor = await conn.execute(
        """SELECT id, enrollment_id, step_position, status, attempts, queued_at, sent_at
           FROM messages WHERE lead_id = %s ORDER BY step_position, queued_at""",
        (lead_id,),
    )
    messages: dict[object, list[MessageView]] = {}
    for row in await cursor.fetchall():
        enrollment = row.pop("enrollment_id")
        messages.setdefault(enrollment, []).append(msgspec.convert(row, MessageView))
    return LeadView(
        id=lead["id"],  # type: ignore[arg-type]
        email=str(lead["email"]),
        source=str(lead["source"]),
        first_name=lead["first_name"],  # type: ignore[arg-type]
        last_name=lead["last_name"],  # type: ignore[arg-type]
        phone=lead["phone"],  # type: ignore[arg-type]
        tags=list(lead["tags"]),  # type: ignore[call-overload]
        utm=msgspec.convert(lead["utm"], Utm),
        locale=lead["locale"],  # type: ignore[arg-type]
        timezone=lead["timezone"],  # type: ignore[arg-type]
        metadata=msgspec.convert(lead["metadata"], dict[str, str]),
        consent=ConsentRecord(
            marketing=bool(lead["consent_marketing"]),
            text=lead["consent_text"],  # type: ignore[arg-type]
            captured_at=lead["consent_captured_at"],  # type: ignore[arg-type]
            recorded_at=lead["consent_recorded_at"],  # type: ignore[arg-type]
            ip=lead["consent_ip"],  # type: ignore[arg-type]
            user_agent=lead["consent_user_agent"],  # type: ignore[arg-type]
            confirmed_at=lead["confirmed_at"],  # type: ignore[arg-type]
            confirmed_ip=lead["confirmed_ip"],  # type: ignore[arg-type]
            confirmed_user_agent=lead["confirmed_user_agent"],  # type: ignore[arg-type]
        ),
        created_at=lead["created_at"],  # type: ignore[arg-type]
        enrollments=[
            EnrollmentView(**row, messages=messages.get(row["id"], []))  # type: ignore[arg-type]
            for row in enrollments
        ],
    )
