"""Emitting the steps that are due: the scheduler's hot loop, set-based.

One claim query takes a batch of due enrollments with ``FOR UPDATE SKIP LOCKED`` (replicas share the
work without blocking each other), then three statements write the whole batch: the message rows,
their ``email.dispatch`` outbox rows, and the advanced enrollments. The send window is checked again at
claim time, so a step held by a pause or an outage past its window waits for the next opening.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from services.common import metrics
from services.common.clock import database_now
from services.common.db import Connection
from services.common.durations import due_after
from services.common.message_lifecycle import transitions as lifecycle
from services.common.message_lifecycle.transitions import NewMessage
from services.common.send_window import next_send_time
from services.scheduler.enrollment import message_id, window_of


@dataclass(frozen=True)
class EmittedStep:
    enrollment_id: uuid.UUID
    message_id: uuid.UUID
    step_position: int
    revision: int


# Served by enrollments_due_idx (next_run_at WHERE status = 'active'): the scan reads the due rows in
# order and stops after the limit, so its cost follows the due work, not the table size. It joins only
# the small sequence tables (the lead's time zone is copied onto the enrollment when it is created).
CLAIM_DUE = """
SELECT e.id, e.lead_id, e.sequence_id, e.revision, e.next_step,
       r.send_window::text AS send_window, e.timezone, nxt.delay_s AS next_delay_s
FROM enrollments e
JOIN sequences s ON s.id = e.sequence_id
JOIN sequence_revisions r ON r.sequence_id = e.sequence_id AND r.revision = e.revision
LEFT JOIN sequence_steps nxt
       ON nxt.sequence_id = e.sequence_id AND nxt.revision = e.revision AND nxt.position = e.next_step + 1
WHERE e.status = 'active' AND e.next_run_at <= %(now)s AND NOT s.paused AND s.deleted_at IS NULL
ORDER BY e.next_run_at
LIMIT %(limit)s
FOR UPDATE OF e SKIP LOCKED
"""

ADVANCE_ENROLLMENTS = """
UPDATE enrollments e
SET next_step = u.next_step, next_run_at = u.next_run_at, status = u.status, updated_at = now()
FROM unnest(%s::uuid[], %s::int[], %s::timestamptz[], %s::text[]) AS u(id, next_step, next_run_at, status)
WHERE e.id = u.id
"""


async def emit_due_steps(conn: Connection, *, limit: int, topic: str, now: datetime | None = None) -> list[EmittedStep]:
    """Claim up to ``limit`` enrollments whose next step is due at ``now`` (default: the database's
    time), queue each step's message and its ``email.dispatch`` command, and advance the enrollment
    (or complete it after its last step); all inside the caller's transaction.

    Enrollments of paused Sequences are held, never skipped. A step due outside its send window is
    not sent: its enrollment moves to the window's next opening. The next step is due its delay after
    ``now``, moved into the window.
    """
    now = now or await database_now(conn)
    cursor = await conn.execute(CLAIM_DUE, {"now": now, "limit": limit})
    rows = await cursor.fetchall()
    if not rows:
        return []
    candidates: list[EmittedStep] = []
    lead_of: dict[uuid.UUID, uuid.UUID] = {}
    sequence_of: dict[uuid.UUID, uuid.UUID] = {}
    updates: tuple[list[uuid.UUID], list[int], list[datetime | None], list[str]] = ([], [], [], [])
    for row in rows:
        enrollment: uuid.UUID = row["id"]  # type: ignore[assignment]
        position = int(row["next_step"])  # type: ignore[call-overload]
        revision = int(row["revision"])  # type: ignore[call-overload]
        window = window_of(row["send_window"])
        timezone: str | None = row["timezone"]  # type: ignore[assignment]
        send_at = next_send_time(now, window, timezone)
        if send_at > now:
            _add(updates, enrollment, position, send_at, "active")
            continue
        candidates.append(EmittedStep(enrollment, message_id(enrollment, position, revision), position, revision))
        lead_of[enrollment] = row["lead_id"]  # type: ignore[assignment]
        sequence_of[enrollment] = row["sequence_id"]  # type: ignore[assignment]
        if row["next_delay_s"] is None:
            _add(updates, enrollment, position + 1, None, "completed")
        else:
            due = due_after(now, int(row["next_delay_s"]))  # type: ignore[call-overload]
            _add(updates, enrollment, position + 1, next_send_time(due, window, timezone), "active")
    emitted: list[EmittedStep] = []
    if candidates:
        inserted = await lifecycle.create(
            conn,
            [
                NewMessage(
                    c.message_id,
                    c.enrollment_id,
                    lead_of[c.enrollment_id],
                    sequence_of[c.enrollment_id],
                    c.revision,
                    c.step_position,
                )
                for c in candidates
            ],
            dispatch_topic=topic,
            now=now,
        )
        # A message that already exists was queued by an earlier run: its command went out with it.
        emitted = [c for c in candidates if c.message_id in inserted]
    await conn.execute(ADVANCE_ENROLLMENTS, updates)
    metrics.STEPS_EMITTED.inc(len(emitted))
    return emitted


def _add(
    updates: tuple[list[uuid.UUID], list[int], list[datetime | None], list[str]],
    enrollment: uuid.UUID,
    next_step: int,
    next_run_at: datetime | None,
    status: str,
) -> None:
    ids, steps, runs, statuses = updates
    ids.append(enrollment)
    steps.append(next_step)
    runs.append(next_run_at)
    statuses.append(status)
