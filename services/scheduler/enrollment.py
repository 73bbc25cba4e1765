"""Enrolling leads into Sequences and emitting the steps that are due.

Plain functions over a connection, inside the caller's transaction; idempotent by construction:
an enrollment's id derives from (lead, sequence) and a message's id from (enrollment, step), both
backed by unique constraints, so re-running any of them after a crash or a redelivery is a no-op.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from proto.messages import EmailDispatch
from services.common import metrics
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.outbox import enqueue_message

ENROLLMENT_NAMESPACE = uuid.UUID("8a4f2d36-97a4-4d1e-8f0e-5d1f0b9a3c21")
MESSAGE_NAMESPACE = uuid.UUID("c7e1b0f4-2a5e-4b8f-9d63-1e4a7c2b9f58")


def enrollment_id(lead_id: uuid.UUID, sequence_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(ENROLLMENT_NAMESPACE, f"{lead_id}/{sequence_id}")


def message_id(enrollment: uuid.UUID, step_position: int) -> uuid.UUID:
    return uuid.uuid5(MESSAGE_NAMESPACE, f"{enrollment}/{step_position}")


async def enroll_lead(conn: Connection, lead_id: uuid.UUID) -> list[uuid.UUID]:
    """Enroll the lead into every live Sequence whose trigger matches it; returns the new enrollments.

    A Sequence that requires consent enrolls only leads with marketing consent. The first step is due
    after its delay, counted from now.
    """
    cursor = await conn.execute(
        """SELECT s.id AS sequence_id, s.current_revision AS revision, st.delay_s
           FROM leads l
           JOIN sequence_revisions r ON (
                r.trigger_all OR l.source = ANY (r.trigger_sources) OR l.tags && r.trigger_tags)
                AND (l.consent_marketing OR NOT r.require_consent)
           JOIN sequences s ON s.id = r.sequence_id AND s.current_revision = r.revision AND s.deleted_at IS NULL
           JOIN sequence_steps st ON st.sequence_id = s.id AND st.revision = r.revision AND st.position = 0
           WHERE l.id = %s""",
        (lead_id,),
    )
    created = []
    for row in await cursor.fetchall():
        new_id = enrollment_id(lead_id, row["sequence_id"])  # type: ignore[arg-type]
        inserted = await conn.execute(
            """INSERT INTO enrollments (id, lead_id, sequence_id, revision, next_step, next_run_at, status)
               VALUES (%s, %s, %s, %s, 0, now() + make_interval(secs => %s), 'active')
               ON CONFLICT (lead_id, sequence_id) DO NOTHING""",
            (new_id, lead_id, row["sequence_id"], row["revision"], row["delay_s"]),
        )
        if inserted.rowcount:
            created.append(new_id)
    await conn.execute("UPDATE leads SET enrolled_at = now() WHERE id = %s AND enrolled_at IS NULL", (lead_id,))
    metrics.ENROLLMENTS.inc(len(created))
    return created


@dataclass(frozen=True)
class EmittedStep:
    enrollment_id: uuid.UUID
    message_id: uuid.UUID
    step_position: int


async def emit_due_steps(conn: Connection, *, limit: int, topic: str) -> list[EmittedStep]:
    """Claim up to ``limit`` enrollments whose next step is due, queue each step's message and its
    ``email.dispatch`` command, and advance the enrollment (or complete it after its last step).

    Enrollments of paused Sequences are held, not skipped. Rows are claimed with SKIP LOCKED, so
    scheduler replicas share the work without blocking each other.
    """
    cursor = await conn.execute(
        """SELECT e.id, e.lead_id, e.sequence_id, e.revision, e.next_step
           FROM enrollments e
           JOIN sequences s ON s.id = e.sequence_id
           WHERE e.status = 'active' AND e.next_run_at <= now() AND NOT s.paused
           ORDER BY e.next_run_at
           LIMIT %s
           FOR UPDATE OF e SKIP LOCKED""",
        (limit,),
    )
    emitted = []
    for row in await cursor.fetchall():
        enrollment: uuid.UUID = row["id"]  # type: ignore[assignment]
        position = int(row["next_step"])  # type: ignore[call-overload]
        new_message = message_id(enrollment, position)
        inserted = await conn.execute(
            """INSERT INTO messages (id, enrollment_id, lead_id, sequence_id, revision, step_position, status)
               VALUES (%s, %s, %s, %s, %s, %s, 'queued')
               ON CONFLICT (id) DO NOTHING""",
            (new_message, enrollment, row["lead_id"], row["sequence_id"], row["revision"], position),
        )
        if inserted.rowcount:
            command = EmailDispatch(
                id=new_message,
                occurred_at=utcnow(),
                message_id=new_message,
                enrollment_id=enrollment,
                lead_id=row["lead_id"],  # type: ignore[arg-type]
            )
            await enqueue_message(conn, topic, str(enrollment), command)
            emitted.append(EmittedStep(enrollment, new_message, position))
        await conn.execute(
            """UPDATE enrollments e
               SET next_step = e.next_step + 1,
                   next_run_at = CASE WHEN nxt.delay_s IS NULL THEN NULL
                                      ELSE now() + make_interval(secs => nxt.delay_s) END,
                   status = CASE WHEN nxt.delay_s IS NULL THEN 'completed' ELSE 'active' END,
                   updated_at = now()
               FROM (SELECT (SELECT delay_s FROM sequence_steps
                             WHERE sequence_id = %(sequence)s AND revision = %(revision)s
                               AND position = %(position)s + 1) AS delay_s) AS nxt
               WHERE e.id = %(enrollment)s""",
            {
                "sequence": row["sequence_id"],
                "revision": row["revision"],
                "position": position,
                "enrollment": enrollment,
            },
        )
    metrics.STEPS_EMITTED.inc(len(emitted))
    return emitted
