"""The one way to record what happened to a message: a row in ``events`` and an ``email.event`` on
``email.events``, both carrying the message, lead, Sequence, revision and step, in the caller's
transaction (so the event is published only if the change it describes commits)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from proto.messages import EmailEvent
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.outbox import enqueue_messages


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
    return bool(await record_events(conn, [NewEvent(ref, event, detail, automated, dedupe_key)], topic=topic))


@dataclass(frozen=True)
class NewEvent:
    ref: MessageRef
    event: str
    detail: str = ""
    automated: bool = False
    dedupe_key: str | None = None


async def record_events(conn: Connection, events: list[NewEvent], *, topic: str) -> int:
    """Record several events in two statements (the dispatcher's hot path); returns how many were new."""
    if not events:
        return 0
    cursor = await conn.execute(
        """INSERT INTO events
               (message_id, lead_id, sequence_id, revision, step_position, type, detail, automated, dedupe_key)
           SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::int[], %s::int[], %s::text[], %s::text[],
                                %s::bool[], %s::text[])
           ON CONFLICT (dedupe_key) DO NOTHING
           RETURNING dedupe_key""",
        (
            [e.ref.message_id for e in events],
            [e.ref.lead_id for e in events],
            [e.ref.sequence_id for e in events],
            [e.ref.revision for e in events],
            [e.ref.step_position for e in events],
            [e.event for e in events],
            [e.detail[:2000] for e in events],
            [e.automated for e in events],
            [e.dedupe_key for e in events],
        ),
    )
    inserted = {row["dedupe_key"] for row in await cursor.fetchall()}
    new = [e for e in events if e.dedupe_key is None or e.dedupe_key in inserted]
    now = utcnow()
    await enqueue_messages(
        conn,
        [
            (
                topic,
                str(e.ref.message_id),
                EmailEvent(
                    id=uuid.uuid5(e.ref.message_id, e.dedupe_key) if e.dedupe_key else uuid.uuid4(),
                    occurred_at=now,
                    message_id=e.ref.message_id,
                    event=e.event,
                    detail=e.detail[:500],
                    lead_id=e.ref.lead_id,
                    sequence_id=e.ref.sequence_id,
                    revision=e.ref.revision,
                    step=e.ref.step,
                    step_position=e.ref.step_position,
                    automated=e.automated,
                ),
            )
            for e in new
        ],
    )
    return len(new)
