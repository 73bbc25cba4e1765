"""The one way to record what happened to a message: a row in ``events`` and an ``email.event`` on
``email.events``, both carrying the message, lead, Sequence, revision and step, in the caller's
transaction (so the event is published only if the change it describes commits)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from proto.codec import encode_message
from proto.messages import EmailEvent
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.ids import name_uuid
from services.common.outbox import WAKE_RELAYS
from services.common.redaction import redact_addresses


@dataclass(frozen=True)
class MessageRef:
    """What an event names about its message."""

    message_id: uuid.UUID
    lead_id: uuid.UUID
    sequence_id: uuid.UUID
    revision: int
    step_position: int
    step: str
    # Read by find_message for the per-variant metrics of tracking (issue 16); empty elsewhere.
    sequence_name: str = ""
    variant: str | None = None


async def find_message(conn: Connection, message_id: uuid.UUID) -> tuple[MessageRef, str] | None:
    """The message and its recipient's normalized address (to hash with ``identity.email_hash``), or None
    when it no longer exists (erased)."""
    cursor = await conn.execute(
        """SELECT m.id, m.lead_id, m.sequence_id, m.revision, m.step_position, st.name, l.email_normalized,
                  m.variant, s.namespace || '/' || s.name AS sequence_name
           FROM messages m
           JOIN leads l ON l.id = m.lead_id
           JOIN sequences s ON s.id = m.sequence_id
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
        sequence_name=str(row["sequence_name"]),
        variant=row["variant"],  # type: ignore[arg-type]
    )
    return ref, str(row["email_normalized"])


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


# The CTEs that record the events passed as the ``%(ev_*)s`` parameters of :func:`event_parameters`
# and queue each new one on the outbox, for one statement (``{where}`` may narrow the events, e.g. to
# messages another CTE of the same statement updated). ``ev_queued`` returns one row per queued event.
EVENT_CTES = sql.SQL("""
    ev AS (
        SELECT * FROM unnest(%(ev_message_id)s::uuid[], %(ev_lead_id)s::uuid[], %(ev_sequence_id)s::uuid[],
                             %(ev_revision)s::int[], %(ev_step_position)s::int[], %(ev_type)s::text[],
                             %(ev_detail)s::text[], %(ev_automated)s::bool[], %(ev_dedupe_key)s::text[],
                             %(ev_payload)s::bytea[]) WITH ORDINALITY
            AS ev(message_id, lead_id, sequence_id, revision, step_position, type, detail, automated, dedupe_key,
                  payload, n)
        {where}),
    ev_inserted AS (
        INSERT INTO events
            (message_id, lead_id, sequence_id, revision, step_position, type, detail, automated, dedupe_key)
        SELECT message_id, lead_id, sequence_id, revision, step_position, type, detail, automated, dedupe_key
        FROM ev
        ON CONFLICT (dedupe_key) DO NOTHING
        RETURNING dedupe_key),
    ev_queued AS (
        INSERT INTO outbox (topic, key, payload)
        SELECT %(ev_topic)s, ev.message_id::text, ev.payload FROM ev
        WHERE ev.dedupe_key IS NULL OR ev.dedupe_key IN (SELECT dedupe_key FROM ev_inserted)
        ORDER BY ev.n
        RETURNING id)""")
_RECORD = (
    sql.SQL("WITH {ctes} SELECT count(*) AS new, {wake} FROM ev_queued")
    .format(ctes=EVENT_CTES.format(where=sql.SQL("")), wake=WAKE_RELAYS)
    .as_string()
)


def event_parameters(events: Sequence[NewEvent], *, topic: str) -> dict[str, object]:
    """The parameters of :data:`EVENT_CTES` (the ``email.event`` of each is encoded up front; only
    those of new events reach the outbox)."""
    now = utcnow()
    return {
        "ev_message_id": [e.ref.message_id for e in events],
        "ev_lead_id": [e.ref.lead_id for e in events],
        "ev_sequence_id": [e.ref.sequence_id for e in events],
        "ev_revision": [e.ref.revision for e in events],
        "ev_step_position": [e.ref.step_position for e in events],
        "ev_type": [e.event for e in events],
        "ev_detail": [redact_addresses(e.detail)[:2000] for e in events],
        "ev_automated": [e.automated for e in events],
        "ev_dedupe_key": [e.dedupe_key for e in events],
        "ev_payload": [
            encode_message(
                EmailEvent(
                    id=name_uuid(e.ref.message_id, e.dedupe_key) if e.dedupe_key else uuid.uuid4(),
                    occurred_at=now,
                    message_id=e.ref.message_id,
                    event=e.event,
                    detail=redact_addresses(e.detail)[:500],
                    lead_id=e.ref.lead_id,
                    sequence_id=e.ref.sequence_id,
                    revision=e.ref.revision,
                    step=e.ref.step,
                    step_position=e.ref.step_position,
                    automated=e.automated,
                )
            )
            for e in events
        ],
        "ev_topic": topic,
    }


async def record_events(conn: Connection, events: Sequence[NewEvent], *, topic: str) -> int:
    """Record several events and queue them on the outbox, in one statement; returns how many were new
    (a repeated ``dedupe_key`` is ignored)."""
    if not events:
        return 0
    cursor = await conn.execute(
        _RECORD,
        event_parameters(events, topic=topic),
    )
    row = await cursor.fetchone()
    return int(row["new"]) if row else 0  # type: ignore[call-overload]
