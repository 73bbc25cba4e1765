"""Dead letters: messages that will not be delivered without a person deciding so.

``healingwork dlq list`` reads them from PostgreSQL (the system of record; ``email.dispatch.dlq``
announces the same for alerting). ``healingwork dlq replay`` gives each chosen message a fresh set of
attempts and queues its ``email.dispatch`` command through the outbox, in one transaction, so a
replay is never half done. Replaying a message that is no longer dead changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from proto.messages import EmailDispatch
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.events import MessageRef, record_event
from services.common.outbox import enqueue_message


@dataclass(frozen=True)
class DeadLetter:
    message_id: uuid.UUID
    sequence: str
    step: str
    attempts: int
    died_at: datetime
    reason: str


async def list_dead_letters(conn: Connection, *, limit: int) -> list[DeadLetter]:
    """The most recent dead messages first (served by ``messages_dead_idx``)."""
    cursor = await conn.execute(
        """SELECT m.id, s.namespace || '/' || s.name AS sequence, st.name AS step, m.attempts, m.updated_at,
                  coalesce(m.last_error, '') AS reason
           FROM messages m
           JOIN sequences s ON s.id = m.sequence_id
           JOIN sequence_steps st
             ON st.sequence_id = m.sequence_id AND st.revision = m.revision AND st.position = m.step_position
           WHERE m.status = 'dead'
           ORDER BY m.updated_at DESC
           LIMIT %s""",
        (limit,),
    )
    return [
        DeadLetter(
            message_id=row["id"],  # type: ignore[arg-type]
            sequence=str(row["sequence"]),
            step=str(row["step"]),
            attempts=int(row["attempts"]),  # type: ignore[call-overload]
            died_at=row["updated_at"],  # type: ignore[arg-type]
            reason=str(row["reason"]),
        )
        for row in await cursor.fetchall()
    ]


async def replay_dead_letters(
    conn: Connection, message_ids: list[uuid.UUID] | None, *, dispatch_topic: str, events_topic: str
) -> list[uuid.UUID]:
    """Re-queue the given dead messages (every dead message when ``message_ids`` is None); returns
    the ids that were replayed. Ids that are not dead are left alone."""
    cursor = await conn.execute(
        """UPDATE messages m
           SET status = 'queued', attempts = 0, next_attempt_at = NULL, sending_at = NULL, updated_at = now()
           FROM sequence_steps st
           WHERE m.status = 'dead' AND (%(all)s OR m.id = ANY(%(ids)s))
             AND st.sequence_id = m.sequence_id AND st.revision = m.revision AND st.position = m.step_position
           RETURNING m.id, m.enrollment_id, m.lead_id, m.sequence_id, m.revision, m.step_position, st.name,
                     now() AS replayed_at""",
        {"all": message_ids is None, "ids": message_ids or []},
    )
    replayed = []
    for row in await cursor.fetchall():
        message_id: uuid.UUID = row["id"]  # type: ignore[assignment]
        ref = MessageRef(
            message_id,
            row["lead_id"],  # type: ignore[arg-type]
            row["sequence_id"],  # type: ignore[arg-type]
            row["revision"],  # type: ignore[arg-type]
            row["step_position"],  # type: ignore[arg-type]
            str(row["name"]),
        )
        stamp = row["replayed_at"].timestamp()  # type: ignore[attr-defined]
        await record_event(conn, ref, "replayed", topic=events_topic, dedupe_key=f"{message_id}/replayed/{stamp}")
        command = EmailDispatch(
            id=uuid.uuid5(message_id, f"replay/{stamp}"),
            occurred_at=utcnow(),
            message_id=message_id,
            enrollment_id=row["enrollment_id"],  # type: ignore[arg-type]
            lead_id=ref.lead_id,
        )
        await enqueue_message(conn, dispatch_topic, str(command.enrollment_id), command)
        replayed.append(message_id)
    return replayed
