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

from services.common.db import Connection
from services.common.message_lifecycle import transitions as lifecycle
from services.common.message_lifecycle.states import Status


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
           WHERE m.status = %s
           ORDER BY m.updated_at DESC
           LIMIT %s""",
        (Status.DEAD, limit),
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
    the ids that were replayed. Ids that are not dead are left alone (:func:`lifecycle.replay`)."""
    return await lifecycle.replay(conn, message_ids, dispatch_topic=dispatch_topic, events_topic=events_topic)
