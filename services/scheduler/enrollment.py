"""Enrolling leads into Sequences, and the ids that make every effect of the scheduler idempotent.

Plain functions over a connection, inside the caller's transaction: an enrollment's id derives from
(lead, sequence) and a message's id from (enrollment, step, revision), both backed by unique
constraints, so re-running any of them after a crash or a redelivery is a no-op.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from functools import lru_cache

import msgspec

from proto.sequence import SendWindow
from services.common import metrics
from services.common.clock import database_now
from services.common.conditions import ConditionError, evaluate
from services.common.db import Connection
from services.common.durations import due_after
from services.common.enrollment_events import EnrollmentRef, announce_started
from services.common.ids import name_uuid
from services.common.send_window import Window, next_send_time
from services.common.step_rules import RevisionRules, rules_of_stored_spec
from services.common.suppressions import LEAD_IS_SUPPRESSED_SQL
from services.scheduler.facts import load_condition_facts

log = logging.getLogger(__name__)

ENROLLMENT_NAMESPACE = uuid.UUID("8a4f2d36-97a4-4d1e-8f0e-5d1f0b9a3c21")
MESSAGE_NAMESPACE = uuid.UUID("c7e1b0f4-2a5e-4b8f-9d63-1e4a7c2b9f58")


def enrollment_id(lead_id: uuid.UUID, sequence_id: uuid.UUID) -> uuid.UUID:
    """The id of a lead's enrollment into a Sequence (a lead enrolls into a Sequence at most once)."""
    return name_uuid(ENROLLMENT_NAMESPACE, f"{lead_id}/{sequence_id}")


def message_id(enrollment: uuid.UUID, step_position: int, revision: int) -> uuid.UUID:
    """The id of the message for one step of one revision of an enrollment."""
    return name_uuid(MESSAGE_NAMESPACE, f"{enrollment}/{revision}/{step_position}")


@lru_cache(maxsize=4096)
def window_of(send_window_json: str | None) -> Window | None:
    """The send window stored with a revision (revisions are immutable, so this is cached)."""
    if send_window_json is None:
        return None
    return Window.of(msgspec.json.decode(send_window_json, type=SendWindow))


# Revisions are immutable, so their parsed rules are kept for the life of the process (bounded).
_RULES: dict[RevisionKey, RevisionRules] = {}
_RULES_KEPT = 4096


RevisionKey = tuple[uuid.UUID, int, datetime]


def revision_key(row: dict[str, object]) -> RevisionKey:
    """A revision's key in the rules cache: its (sequence, revision) and the time it was stored (a
    revision is immutable, but a database built again, as in tests, reuses the numbers)."""
    return row["sequence_id"], int(row["revision"]), row["revision_created_at"]  # type: ignore[return-value, call-overload]


async def revision_rules(conn: Connection, keys: set[RevisionKey]) -> dict[RevisionKey, RevisionRules]:
    """The conditions and variants of each (sequence, revision), parsed once per process."""
    missing = [key for key in keys if key not in _RULES]
    if missing:
        cursor = await conn.execute(
            """SELECT r.sequence_id, r.revision, r.created_at AS revision_created_at, r.spec::text AS spec
               FROM sequence_revisions r
               JOIN unnest(%s::uuid[], %s::int[]) AS k(sequence_id, revision)
                 ON k.sequence_id = r.sequence_id AND k.revision = r.revision""",
            ([k[0] for k in missing], [k[1] for k in missing]),
        )
        if len(_RULES) > _RULES_KEPT:
            _RULES.clear()
        for row in await cursor.fetchall():
            _RULES[revision_key(row)] = rules_of_stored_spec(str(row["spec"]))
    return {key: _RULES[key] for key in keys if key in _RULES}


async def enroll_lead(
    conn: Connection, lead_id: uuid.UUID, *, now: datetime | None = None, lifecycle_topic: str | None = None
) -> list[uuid.UUID]:
    """Enroll the lead into every live Sequence whose trigger matches it; returns the new enrollments.

    A Sequence that requires consent enrolls only leads with marketing consent; a lead that must confirm
    its address (double opt-in) and a Sequence with ``doubleOptIn`` enroll only confirmed leads (the
    confirmation queues ``lead.accepted`` again, so the lead comes back here); a suppressed address
    enrolls nowhere, an address that left a Sequence (the preference page) not into that one; a paused
    Sequence enrolls (its steps are held). The first step is due after its
    delay counted from ``now`` (default: the database's time), moved into the send window. The lead's
    time zone is copied onto the enrollment: send windows use the zone the lead had when enrolled.
    A Sequence with ``trigger.when`` enrolls the lead only when it is true over the lead and its events
    so far; one that fails to evaluate enrolls nobody (logged and counted). With ``lifecycle_topic``,
    each new enrollment is announced there (``enrollment.started``).
    """
    now = now or await database_now(conn)
    cursor = await conn.execute(
        """SELECT s.id AS sequence_id, s.current_revision AS revision, st.delay_s,
                  r.send_window::text AS send_window, l.timezone, r.has_rules,
                  r.created_at AS revision_created_at
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
    created: list[EnrollmentRef] = []
    rows = await cursor.fetchall()
    rules = await revision_rules(conn, {revision_key(r) for r in rows if r["has_rules"]})
    gated = [rule for rule in rules.values() if rule.trigger_when is not None]
    facts = (await load_condition_facts(conn, [lead_id], now)).get(lead_id) if gated else None
    for row in rows:
        rule = rules.get(revision_key(row))
        if rule is not None and rule.trigger_when is not None:
            try:
                if facts is None or not evaluate(rule.trigger_when, facts):
                    metrics.ENROLLMENTS_NOT_TRIGGERED.labels("false").inc()
                    continue
            except ConditionError as error:
                log.warning("trigger.when failed; the lead is not enrolled", extra={"error": str(error)})
                metrics.ENROLLMENTS_NOT_TRIGGERED.labels("failed").inc()
                continue
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
            created.append(EnrollmentRef(new_id, lead_id, row["sequence_id"], int(row["revision"])))  # type: ignore[arg-type, call-overload]
    await conn.execute("UPDATE leads SET enrolled_at = now() WHERE id = %s AND enrolled_at IS NULL", (lead_id,))
    if lifecycle_topic is not None:
        await announce_started(conn, lifecycle_topic, created)
    metrics.ENROLLMENTS.inc(len(created))
    return [e.enrollment_id for e in created]
