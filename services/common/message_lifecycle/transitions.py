"""Every status write to ``messages``: one function per transition, each one SQL statement guarded by
the transition's sources (``WHERE status = ANY(<sources>)``), so a transition the state machine does
not allow changes nothing and reports nothing; and the dispatcher's group write, outcomes and claims
in one statement.

Each function runs inside the caller's transaction (or, for the group write, as one autocommit
statement) and queues what its transition announces (commands, events, dead letters) in the same
transaction, through the outbox.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from psycopg import sql

from proto.codec import encode_message
from services.common.db import Connection
from services.common.events import EVENT_CTES, MessageRef, event_parameters, record_events
from services.common.message_lifecycle.announcements import (
    Attempt,
    dead_letter,
    dispatch_outbox_row,
    event,
)
from services.common.message_lifecycle.states import (
    CANCEL,
    CLAIM,
    CREATE,
    EVENT_OF_OUTCOME,
    GIVE_UP,
    OUTCOMES,
    REPLAY,
    REPUBLISH,
    REQUEUE_RETRY,
    REQUEUE_STUCK,
    Status,
    Transition,
    outcome_transition,
)
from services.common.outbox import WAKE_RELAYS, enqueue_messages
from services.common.redaction import redact_addresses

# ---------------------------------------------------------------------------------------------------
# create: the scheduler's new messages, with their first command.


@dataclass(frozen=True)
class NewMessage:
    id: uuid.UUID
    enrollment_id: uuid.UUID
    lead_id: uuid.UUID
    sequence_id: uuid.UUID
    revision: int
    step_position: int
    variant: str | None = None  # the A/B variant of the step this lead gets


_CREATE = """
INSERT INTO messages (id, enrollment_id, lead_id, sequence_id, revision, step_position, status, variant)
SELECT m.id, m.enrollment_id, m.lead_id, m.sequence_id, m.revision, m.step_position, %s, m.variant
FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[], %s::int[], %s::int[], %s::text[])
     AS m(id, enrollment_id, lead_id, sequence_id, revision, step_position, variant)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""


async def create(
    conn: Connection, messages: Sequence[NewMessage], *, dispatch_topic: str, now: datetime | None = None
) -> set[uuid.UUID]:
    """Insert ``messages`` as ``queued`` and queue each one's first ``email.dispatch`` command (dated
    ``now``, the caller's clock); returns the ids inserted (a message that already exists was created
    earlier, its command with it)."""
    if not messages:
        return set()
    cursor = await conn.execute(
        _CREATE,
        (
            CREATE.target,
            [m.id for m in messages],
            [m.enrollment_id for m in messages],
            [m.lead_id for m in messages],
            [m.sequence_id for m in messages],
            [m.revision for m in messages],
            [m.step_position for m in messages],
            [m.variant for m in messages],
        ),
    )
    inserted = {row["id"] for row in await cursor.fetchall()}
    first = [
        # The step's name is not needed by a command; an event would read it from the row.
        Attempt(MessageRef(m.id, m.lead_id, m.sequence_id, m.revision, m.step_position, ""), m.enrollment_id, 0, 1)
        for m in messages
        if m.id in inserted
    ]
    await enqueue_messages(conn, [dispatch_outbox_row(dispatch_topic, attempt, now) for attempt in first])
    return inserted  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------
# The batch jobs' and the operator's transitions: one guarded UPDATE each.

# The SET clause of each transition besides ``status`` and ``updated_at``.
_ASSIGNMENTS: dict[Transition, str] = {
    REQUEUE_RETRY: "next_attempt_at = NULL",
    GIVE_UP: "next_attempt_at = NULL, "
    "last_error = left(coalesce(m.last_error || ' ', '') || '(attempt cap reached)', 2000)",
    REPUBLISH: "",  # only the clock (updated_at) restarts
    REQUEUE_STUCK: "last_error = left(coalesce(m.last_error || ' ', '') || '(requeued after a stuck send)', 2000)",
    REPLAY: "attempts = 0, replays = m.replays + 1, next_attempt_at = NULL, sending_at = NULL",
    CANCEL: "next_attempt_at = NULL, last_error = 'sequence deleted'",
}


def _move_statement(transition: Transition, selection: str) -> bytes:
    # ``before`` is the row as the statement found it (the value a transition replaces).
    return (
        sql.SQL(
            """UPDATE messages m
               SET status = %(target)s, {assignments}updated_at = now()
               FROM messages before
               JOIN sequence_steps st
                 ON st.sequence_id = before.sequence_id AND st.revision = before.revision
                    AND st.position = before.step_position
               WHERE m.id = before.id AND ({selection}) AND m.status = ANY(%(sources)s)
               RETURNING m.id, m.enrollment_id, m.lead_id, m.sequence_id, m.revision, m.step_position,
                         st.name AS step, m.attempts, m.replays, before.last_error AS last_error_before"""
        )
        .format(
            assignments=sql.SQL(_ASSIGNMENTS[transition] + ", " if _ASSIGNMENTS[transition] else ""),
            selection=sql.SQL(selection),
        )
        .as_string()
        .encode()
    )


_BY_IDS = "m.id = ANY(%(ids)s)"
Row = dict[str, object]


async def _move(
    conn: Connection, transition: Transition, selection: str, params: dict[str, object]
) -> list[tuple[Attempt, Row]]:
    """Apply ``transition`` to the selected messages that are in one of its sources; returns the
    current attempt of each one moved, with its row."""
    cursor = await conn.execute(
        _move_statement(transition, selection),
        {"target": transition.target, "sources": transition.source_names, **params},
    )
    return [(_attempt_of(row), row) for row in await cursor.fetchall()]


def _attempt_of(row: Row) -> Attempt:
    ref = MessageRef(
        row["id"],  # type: ignore[arg-type]
        row["lead_id"],  # type: ignore[arg-type]
        row["sequence_id"],  # type: ignore[arg-type]
        row["revision"],  # type: ignore[arg-type]
        row["step_position"],  # type: ignore[arg-type]
        str(row["step"]),
    )
    return Attempt(ref, row["enrollment_id"], int(row["replays"]), int(row["attempts"]))  # type: ignore[arg-type, call-overload]


async def requeue_retry(conn: Connection, ids: Sequence[uuid.UUID], *, dispatch_topic: str) -> list[uuid.UUID]:
    """retrying → queued, with the command of the next attempt; returns the ids moved."""
    moved = await _move(conn, REQUEUE_RETRY, _BY_IDS, {"ids": list(ids)})
    await enqueue_messages(conn, [dispatch_outbox_row(dispatch_topic, a.next()) for a, _ in moved])
    return [a.message_id for a, _ in moved]


async def give_up(
    conn: Connection, ids: Sequence[uuid.UUID], *, max_attempts: int, events_topic: str, dlq_topic: str
) -> list[uuid.UUID]:
    """retrying → dead at the attempt cap: records the ``dead`` event and queues the dead letter;
    returns the ids moved."""
    moved = await _move(conn, GIVE_UP, _BY_IDS, {"ids": list(ids)})
    reasons = [
        f"attempt cap of {max_attempts} reached; last error: {row['last_error_before'] or 'unknown'}"
        for _, row in moved
    ]
    await record_events(
        conn, [event(a, "dead", reason) for (a, _), reason in zip(moved, reasons, strict=True)], topic=events_topic
    )
    await enqueue_messages(
        conn,
        [(dlq_topic, str(a.message_id), dead_letter(a, reason)) for (a, _), reason in zip(moved, reasons, strict=True)],
    )
    return [a.message_id for a, _ in moved]


async def republish(conn: Connection, ids: Sequence[uuid.UUID], *, dispatch_topic: str) -> list[uuid.UUID]:
    """queued → queued: the command of the next attempt again (the one that got lost), and the
    message's clock restarts; returns the ids."""
    moved = await _move(conn, REPUBLISH, _BY_IDS, {"ids": list(ids)})
    await enqueue_messages(conn, [dispatch_outbox_row(dispatch_topic, a.next()) for a, _ in moved])
    return [a.message_id for a, _ in moved]


async def requeue_stuck(conn: Connection, ids: Sequence[uuid.UUID], *, dispatch_topic: str) -> list[uuid.UUID]:
    """sending → queued for a send whose dispatcher died, with the command of the next attempt; the
    email may already be with the provider (the SMTP duplicate window); returns the ids moved."""
    moved = await _move(conn, REQUEUE_STUCK, _BY_IDS, {"ids": list(ids)})
    await enqueue_messages(conn, [dispatch_outbox_row(dispatch_topic, a.next()) for a, _ in moved])
    return [a.message_id for a, _ in moved]


async def replay(
    conn: Connection, ids: Sequence[uuid.UUID] | None, *, dispatch_topic: str, events_topic: str
) -> list[uuid.UUID]:
    """dead → queued (every dead message when ``ids`` is None), as a new life with fresh attempts:
    records ``replayed`` and queues the first command of the new life; returns the ids moved."""
    moved = await _move(conn, REPLAY, "%(all)s OR m.id = ANY(%(ids)s)", {"all": ids is None, "ids": list(ids or [])})
    await record_events(conn, [event(a, "replayed") for a, _ in moved], topic=events_topic)
    await enqueue_messages(conn, [dispatch_outbox_row(dispatch_topic, a.next()) for a, _ in moved])
    return [a.message_id for a, _ in moved]


async def cancel_sequence_messages(conn: Connection, sequence_id: uuid.UUID) -> int:
    """queued|retrying → skipped for every message of a deleted Sequence (a message being sent
    finishes); returns how many."""
    return len(await _move(conn, CANCEL, "m.sequence_id = %(sequence)s", {"sequence": sequence_id}))


# ---------------------------------------------------------------------------------------------------
# The dispatcher's transitions: claim and record, a group of both in one statement.


@dataclass(frozen=True)
class Outcome:
    """How ``attempt`` ended: one of the statuses of :data:`~.states.OUTCOMES`."""

    attempt: Attempt
    status: Status
    detail: str
    retry_in: timedelta | None = None


@dataclass(frozen=True)
class Claimed:
    """A claimed message: the attempt it is on (counted by the claim) and when it was claimed."""

    message_id: uuid.UUID
    life: int
    attempt: int
    claimed_at: datetime


# Record each outcome (only where the message is still in the outcome transitions' source,
# ``sending``), its event and, for a dead one, its dead letter; then claim (``sending`` committed,
# the attempt counted) what may be sent now. Records and claims touch disjoint rows: a message is
# either ``sending`` or claimable, never both. One statement, so a group costs one round trip.
_RECORD_AND_CLAIM = (
    sql.SQL(
        """WITH o AS (
               SELECT * FROM unnest(%(o_id)s::uuid[], %(o_status)s::text[], %(o_detail)s::text[],
                                    %(o_retry_in)s::interval[], %(o_dead_letter)s::bytea[])
                   AS o(id, status, detail, retry_in, dead_letter)),
           recorded AS (
               UPDATE messages m
               SET status = o.status,
                   sent_at = CASE WHEN o.status = %(sent)s THEN now() END,
                   next_attempt_at = CASE WHEN o.status = %(retrying)s THEN now() + o.retry_in END,
                   smtp_response = CASE WHEN o.status = %(sent)s THEN o.detail ELSE m.smtp_response END,
                   last_error = CASE WHEN o.status = %(sent)s THEN m.last_error ELSE o.detail END,
                   updated_at = now()
               FROM o
               WHERE m.id = o.id AND m.status = ANY(%(record_from)s)
               RETURNING m.id),
           {event_ctes},
           dead_lettered AS (
               INSERT INTO outbox (topic, key, payload)
               SELECT %(dlq_topic)s, o.id::text, o.dead_letter FROM o JOIN recorded USING (id)
               WHERE o.dead_letter IS NOT NULL
               RETURNING id),
           claimed AS (
               UPDATE messages
               SET status = %(claim_to)s, attempts = attempts + 1, next_attempt_at = NULL,
                   sending_at = now(), updated_at = now()
               WHERE id = ANY(%(claim_ids)s) AND status = ANY(%(claim_from)s)
                 AND (next_attempt_at IS NULL OR next_attempt_at <= now())
               RETURNING id, attempts, replays, sending_at),
           woken AS (
               SELECT {wake} WHERE EXISTS (SELECT FROM ev_queued) OR EXISTS (SELECT FROM dead_lettered))
           -- `woken` is selected only so that it runs: a CTE that modifies nothing runs only if read.
           -- One row even when nothing is claimed, so `recorded` always comes back.
           SELECT c.id, c.attempts, c.replays, c.sending_at,
                  (SELECT count(*) FROM recorded) AS recorded, (SELECT count(*) FROM woken) AS woken
           FROM (VALUES (1)) AS one LEFT JOIN claimed c ON true"""
    )
    .format(
        event_ctes=EVENT_CTES.format(where=sql.SQL("WHERE ev.message_id IN (SELECT id FROM recorded)")),
        wake=WAKE_RELAYS,
    )
    .as_string()
)


_RECORD_FROM = sorted(set().union(*(t.sources for t in OUTCOMES.values())))


async def record_and_claim(
    conn: Connection,
    outcomes: Sequence[Outcome],
    claim_ids: Sequence[uuid.UUID],
    *,
    events_topic: str,
    dlq_topic: str,
) -> tuple[dict[uuid.UUID, Claimed], int]:
    """Record ``outcomes`` (sending → sent|retrying|dead|skipped, with their events and dead letters)
    and claim ``claim_ids`` (queued|due retrying → sending), in one statement. Returns the messages
    claimed (a message that may not be sent now is absent) and how many outcomes were written (an
    outcome for a message no longer ``sending`` writes nothing). RefusedTransition for an outcome
    status that does not end an attempt."""
    for o in outcomes:
        outcome_transition(o.status)
    # Stored and published texts never carry an address (the dispatcher also removes the recipient's
    # known values; this catches any other caller).
    outcomes = [replace(o, detail=redact_addresses(o.detail)) for o in outcomes]
    cursor = await conn.execute(
        _RECORD_AND_CLAIM,
        {
            "o_id": [o.attempt.message_id for o in outcomes],
            "o_status": [str(o.status) for o in outcomes],
            "o_detail": [o.detail[:2000] for o in outcomes],
            "o_retry_in": [o.retry_in for o in outcomes],
            "o_dead_letter": [
                encode_message(dead_letter(o.attempt, o.detail)) if o.status == Status.DEAD else None for o in outcomes
            ],
            "sent": Status.SENT,
            "retrying": Status.RETRYING,
            "record_from": _RECORD_FROM,
            "dlq_topic": dlq_topic,
            "claim_ids": list(claim_ids),
            "claim_to": CLAIM.target,
            "claim_from": CLAIM.source_names,
            **event_parameters(
                [event(o.attempt, EVENT_OF_OUTCOME[o.status], o.detail) for o in outcomes], topic=events_topic
            ),
        },
    )
    rows = await cursor.fetchall()
    claimed = [
        Claimed(row["id"], int(row["replays"]), int(row["attempts"]), row["sending_at"])  # type: ignore[arg-type, call-overload]
        for row in rows
        if row["id"] is not None
    ]
    return {c.message_id: c for c in claimed}, int(rows[0]["recorded"])  # type: ignore[call-overload]


async def claim(conn: Connection, message_id: uuid.UUID) -> Claimed | None:
    """queued|due retrying → sending, counting the attempt; None if it may not be sent now (another
    replica claimed it, it is sent, dead, skipped, or its retry is not due)."""
    claimed, _ = await record_and_claim(conn, [], [message_id], events_topic="", dlq_topic="")
    return claimed.get(message_id)


async def record(conn: Connection, outcome: Outcome, *, events_topic: str, dlq_topic: str) -> bool:
    """sending → the outcome's status, with its event (and dead letter); False if the message is no
    longer ``sending`` (nothing written)."""
    _, recorded = await record_and_claim(conn, [outcome], [], events_topic=events_topic, dlq_topic=dlq_topic)
    return recorded == 1
