"""The one way to record what happened to a message: a row in ``events`` and an ``email.event`` on
``email.events``, both carrying the message, lead, Sequence, revision and step, in the caller's
transaction (so the event is published only if the change it describes commits)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from proto.messages import EmailEvent
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.outbox import enqueue_message


@dataclass(frozen=True)
class MessageRef:
    """What an event names about its message."""

    message_id: uuid.UUID
    lead_id: uuid.UUID
    sequence_id: uuid.UUID
    revision: int
    step_position: int
    step: str


async def find_message(conn: Connection, message_id: uuid.UUID) -> tuple[MessageRef, str] | None:
    """The message and its recipient's address hash, or None when it no longer exists (erased)."""
    cursor = await conn.execute(
        """SELECT m.id, m.lead_id, m.sequence_id, m.revision, m.step_position, st.name, l.email_hash
           FROM messages m
           JOIN leads l ON l.id = m.lead_id
           JOIN sequence_steps st
             ON st.sequence_id = m.sequence_id AND st.revision = m.revision AND st.position = m.step_position
           WHERE m.id = %s""",
        (message_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    ref = MessageRef(
        message_id=row["id"],  # type: ignore[arg-type]
        lead_id=row["lead_id"],  # type: ignore[arg-type]
        sequence_id=row["sequence_id"],  # type: ignore[arg-type]
        revision=row["revision"],  # type: ignore[arg-type]
        step_position=row["step_position"],  # type: ignore[arg-type]
        step=row["name"],  # type: ignore[arg-type]
    )
    return ref, str(row["email_hash"])


async def record_event(
    conn: Connection,
    ref: MessageRef,
    event: str,
    *,
    topic: str,
    detail: str = "",
    automated: bool = False,
    dedupe_key: str | None = None,
) -> bool:
    """Record ``event`` for the message; with a ``dedupe_key`` a repeat is ignored. Returns whether it was new."""
    inserted = await conn.execute(
        """INSERT INTO events
               (message_id, lead_id, sequence_id, revision, step_position, type, detail, automated, dedupe_key)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (dedupe_key) DO NOTHING""",
        (
            ref.message_id,
            ref.lead_id,
            ref.sequence_id,
            ref.revision,
            ref.step_position,
            event,
            detail[:2000],
            automated,
            dedupe_key,
        ),
    )
    if not inserted.rowcount:
        return False
    message = EmailEvent(
        id=uuid.uuid5(ref.message_id, dedupe_key) if dedupe_key else uuid.uuid4(),
        occurred_at=utcnow(),
        message_id=ref.message_id,
        event=event,
        detail=detail[:500],
        lead_id=ref.lead_id,
        sequence_id=ref.sequence_id,
        revision=ref.revision,
        step=ref.step,
        step_position=ref.step_position,
        automated=automated,
    )
    await enqueue_message(conn, topic, str(ref.message_id), message)
    return True
