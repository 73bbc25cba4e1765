"""Sequences, a lead enrolled in them and the link to its preference page, for the preference-page tests."""

from __future__ import annotations

import uuid
from typing import Any

from services.common.config import DatabaseSettings, IntakeSettings
from services.common.db import open_pool, transaction
from services.common.sequences import apply_sequence, parse_sequence_document
from services.common.tokens import Purpose, sign_token
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead

HOSTILE_DISPLAY_NAME = '</label><script>alert("seq")</script><img src=x onerror=alert(1)>'
HOSTILE_FIRST_NAME = "<script>alert('name')</script>"


def sequence(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": name},
        "spec": {
            "trigger": {"sources": ["website"]},
            "steps": [
                {"name": "first", "subject": "First", "text": "One"},
                {"name": "second", "delay": "1d", "subject": "Second", "text": "Two"},
            ],
            **spec,
        },
    }


TIPS = sequence("tips", displayName="Weekly tips")
HOSTILE = sequence("hostile", displayName=HOSTILE_DISPLAY_NAME)
COURSE = sequence("course", displayName="Five-day course", unsubscribeScope="Sequence")


async def apply_sequences(database_url: str, documents: list[dict[str, Any]]) -> None:
    pool = await open_pool(DatabaseSettings(database_url=database_url))
    try:
        async with transaction(pool) as conn:
            for document in documents:
                await apply_sequence(conn, parse_sequence_document(document, "test"))
    finally:
        await pool.close()


async def enrolled_lead(
    database_url: str, email: str = "grace@example.com", first_name: str = "Grace", locale: str | None = None
) -> dict[str, uuid.UUID]:
    """A lead enrolled in every Sequence, its first steps sent; returns each Sequence's sent message id."""
    pool = await open_pool(DatabaseSettings(database_url=database_url))
    try:
        lead_id = uuid.uuid4()
        async with transaction(pool) as conn:
            await conn.execute(
                """INSERT INTO leads (id, email, email_normalized, first_name, locale, source, consent_marketing)
                   VALUES (%s, %s, %s, %s, %s, 'website', true)""",
                (lead_id, email, email.lower(), first_name, locale),
            )
            await enroll_lead(conn, lead_id)
            steps = await emit_due_steps(conn, limit=10, topic="email.dispatch")
            await conn.execute("UPDATE messages SET status = 'sent', sent_at = now() WHERE lead_id = %s", (lead_id,))
            cursor = await conn.execute(
                "SELECT m.id, s.name FROM messages m JOIN sequences s ON s.id = m.sequence_id WHERE m.lead_id = %s",
                (lead_id,),
            )
            sent = {str(row["name"]): row["id"] for row in await cursor.fetchall()}
        assert len(steps) == len(sent)
        return sent  # type: ignore[return-value]
    finally:
        await pool.close()


def page_path(settings: IntakeSettings, message_id: uuid.UUID) -> str:
    return f"/u/{sign_token(settings.hmac_secret, Purpose.UNSUBSCRIBE, message_id)}"
