"""Enrolling leads into Sequences, and the ids that make every effect of the scheduler idempotent.

Plain functions over a connection, inside the caller's transaction: an enrollment's id derives from
(lead, sequence) and a message's id from (enrollment, step, revision), both backed by unique
constraints, so re-running any of them after a crash or a redelivery is a no-op.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import lru_cache

import msgspec

from proto.sequence import SendWindow
from services.common import metrics
from services.common.clock import database_now
from services.common.db import Connection
from services.common.durations import due_after
from services.common.send_window import Window, next_send_time
from services.common.suppressions import LEAD_IS_SUPPRESSED_SQL

ENROLLMENT_NAMESPACE = uuid.UUID("8a4f2d36-97a4-4d1e-8f0e-5d1f0b9a3c21")
MESSAGE_NAMESPACE = uuid.UUID("c7e1b0f4-2a5e-4b8f-9d63-1e4a7c2b9f58")


def enrollment_id(lead_id: uuid.UUID, sequence_id: uuid.UUID) -> uuid.UUID:
    """The id of a lead's enrollment into a Sequence (a lead enrolls into a Sequence at most once)."""
    return uuid.uuid5(ENROLLMENT_NAMESPACE, f"{lead_id}/{sequence_id}")


def message_id(enrollment: uuid.UUID, step_position: int, revision: int) -> uuid.UUID:
    """The id of the message for one step of one revision of an enrollment."""
    return uuid.uuid5(MESSAGE_NAMESPACE, f"{enrollment}/{revision}/{step_position}")


@lru_cache(maxsize=4096)
def window_of(send_window_json: str | None) -> Window | None:
    """The send window stored with a revision (revisions are immutable, so this is cached)."""
    if send_window_json is None:
        return None
    return Window.of(msgspec.json.decode(send_window_json, type=SendWindow))


async def enroll_lead(conn: Connection, lead_id: uuid.UUID, *, now: datetime | None = None) -> list[uuid.UUID]:
    """Enroll the lead into every live Sequence whose trigger matches it; returns the new enrollments.

    A Sequence that requires consent enrolls only leads with marketing consent; a lead that must confirm
    its address (double opt-in) and a Sequence with ``doubleOptIn`` enroll only confirmed leads (the
    confirmation queues ``lead.accepted`` again, so the lead comes back here); a suppressed address
    enrolls nowhere, an address that left a Sequence (the preference page) not into that one; a paused
    Sequence enrolls (its steps are held). The first step is due after its
    delay counted from ``now`` (default: the database's time), moved into the send window. The lead's
    time zone is copied onto the enrollment: send windows use the zone the lead had when enrolled.
    """
    now = now or await database_now(conn)
    cursor = await conn.execute(
        """SELECT s.id AS sequence_id, s.current_revision AS revision, st.delay_s,
                  r.send_window::text AS send_window, l.timezone
           FROM leads l
           JOIN sequence_revisions r ON (
                r.trigger_all OR l.source = ANY (r.trigger_sources) OR l.tags && r.trigger_tags)
                AND (l.consent_marketing OR NOT r.require_consent)
                -- double opt-in: a lead that must confirm, or a Sequence that asks it, waits for confirmed_at
                AND (l.confirmed_at IS NOT NULL OR NOT (l.confirmation_required OR r.double_opt_in))
           JOIN sequences s ON s.id = r.sequence_id AND s.current_revision = r.revision AND s.deleted_at IS NULL
           JOIN sequence_steps st ON st.sequence_id = s.id AND st.revision = r.revision AND st.position = 0
           WHERE l.id = %s
             AND NOT EXISTS (SELECT 1 FROM sequence_unsubscribes u
                             WHERE u.email_hash = l.email_hash AND u.sequence_id = s.id)
             AND NOT """  # noqa: S608 - a constant fragment, no input
        + LEAD_IS_SUPPRESSED_SQL,
        (lead_id,),
    )
    created = []
    for row in await cursor.fetchall():
        new_id = enrollment_id(lead_id, row["sequence_id"])  # type: ignore[arg-type]
        due = due_after(now, int(row["delay_s"]))  # type: ignore[call-overload]
        first_run = next_send_time(due, window_of(row["send_window"]), row["timezone"])  # type: ignore[arg-type]
        inserted = await conn.execute(
            """INSERT INTO enrollments (id, lead_id, sequence_id, revision, next_step, next_run_at, status, timezone)
               VALUES (%s, %s, %s, %s, 0, %s, 'active', %s)
               ON CONFLICT (lead_id, sequence_id) DO NOTHING""",
            (new_id, lead_id, row["sequence_id"], row["revision"], first_run, row["timezone"]),
        )
        if inserted.rowcount:
            created.append(new_id)
    await conn.execute("UPDATE leads SET enrolled_at = now() WHERE id = %s AND enrolled_at IS NULL", (lead_id,))
    metrics.ENROLLMENTS.inc(len(created))
    return created
