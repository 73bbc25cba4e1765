"""Enrolling leads into Sequences, and the ids that make every effect of the scheduler idempotent.

Plain functions over a connection, inside the caller's transaction: an enrollment's id derives from
(lead, sequence) and a message's id from (enrollment, step, revision), both backed by unique
constraints, so re-running any of them after a crash or a redelivery is a no-op.

Leads are enrolled a batch at a time (the scheduler passes a Kafka fetch's leads): the statements do
not grow with the batch, and enrolling one lead is the batch of one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import msgspec
from psycopg.rows import class_row

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


# A batch's matches: each lead with each live Sequence whose current revision's trigger, consent and
# double opt-in rules it meets, that its address did not leave and that it is not suppressed from, in
# (lead, sequence) order. The batch's leads are passed as one sorted array.
_MATCHES = (
    """SELECT l.id AS lead_id, s.id AS sequence_id, s.current_revision AS revision, st.delay_s,
              r.send_window::text AS send_window, l.timezone, r.has_rules,
              r.created_at AS revision_created_at
       FROM unnest(%s::uuid[]) AS b(id)
       JOIN leads l ON l.id = b.id
       JOIN sequence_revisions r ON (
            r.trigger_all OR l.source = ANY (r.trigger_sources) OR l.tags && r.trigger_tags)
            AND (l.consent_marketing OR NOT r.require_consent)
            -- double opt-in: a lead that must confirm, or a Sequence that asks it, waits for confirmed_at
            AND (l.confirmed_at IS NOT NULL OR NOT (l.confirmation_required OR r.double_opt_in))
       JOIN sequences s ON s.id = r.sequence_id AND s.current_revision = r.revision AND s.deleted_at IS NULL
       JOIN sequence_steps st ON st.sequence_id = s.id AND st.revision = r.revision AND st.position = 0
       WHERE NOT EXISTS (SELECT 1 FROM sequence_unsubscribes u
                         WHERE u.email_hash = l.email_hash AND u.sequence_id = s.id)
         AND NOT """  # noqa: S608 - a constant fragment, no input
    + LEAD_IS_SUPPRESSED_SQL
    + "\n       ORDER BY l.id, s.id"
)

# The batch's new enrollments in one statement; RETURNING names those that did not exist yet. The
# rows are inserted in the arrays' (lead, sequence) order.
_INSERT = """
INSERT INTO enrollments (id, lead_id, sequence_id, revision, next_step, next_run_at, status, timezone)
SELECT n.id, n.lead_id, n.sequence_id, n.revision, 0, n.next_run_at, 'active', n.timezone
FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::int[], %s::timestamptz[], %s::text[])
     AS n(id, lead_id, sequence_id, revision, next_run_at, timezone)
ON CONFLICT (lead_id, sequence_id) DO NOTHING
RETURNING id
"""


# Every lead of the batch is marked handled, matched or not. The rows are locked in id order by the
# sort under the lock, whatever scan finds them (for more than one id PostgreSQL picks a bitmap scan,
# which would lock them in the table's order): two transactions marking overlapping batches queue on
# their first common lead instead of each holding a lead the other waits for.
_MARK_ENROLLED = """
UPDATE leads l SET enrolled_at = now()
FROM (SELECT x.id FROM leads x WHERE x.id = ANY(%s) AND x.enrolled_at IS NULL ORDER BY x.id FOR NO KEY UPDATE) AS t
WHERE l.id = t.id
"""


@dataclass(frozen=True)
class _Match:
    """A row of :data:`_MATCHES`: a lead that a Sequence's current revision would enroll."""

    lead_id: uuid.UUID
    sequence_id: uuid.UUID
    revision: int
    delay_s: int
    send_window: str | None
    timezone: str | None
    has_rules: bool
    revision_created_at: datetime

    @property
    def rules_key(self) -> RevisionKey:
        return self.sequence_id, self.revision, self.revision_created_at


async def enroll_leads(
    conn: Connection,
    lead_ids: Iterable[uuid.UUID],
    *,
    now: datetime | None = None,
    lifecycle_topic: str | None = None,
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """Enroll each lead into every live Sequence whose trigger matches it; returns each lead's new
    enrollments (every lead of the batch is a key; a lead named twice is enrolled once).

    A Sequence that requires consent enrolls only leads with marketing consent; a lead that must confirm
    its address (double opt-in) and a Sequence with ``doubleOptIn`` enroll only confirmed leads (the
    confirmation queues ``lead.accepted`` again, so the lead comes back here); a suppressed address
    enrolls nowhere, an address that left a Sequence (the preference page) not into that one; a paused
    Sequence enrolls (its steps are held). The first step is due after its
    delay counted from ``now`` (default: the database's time), moved into the send window. The lead's
    time zone is copied onto the enrollment: send windows use the zone the lead had when enrolled.
    A Sequence with ``trigger.when`` enrolls a lead only when it is true over that lead and its events
    so far; one that fails to evaluate enrolls nobody (logged and counted). With ``lifecycle_topic``,
    each new enrollment is announced there (``enrollment.started``). Every lead of the batch is marked
    enrolled (``enrolled_at``), matched or not.

    The statements do not grow with the batch: the matches, the facts of the leads a ``trigger.when``
    gates, the new enrollments, the leads' ``enrolled_at`` and the announcements, one statement each
    (plus the rules of a revision this process has not read yet). The enrollments are inserted in
    (lead, sequence) order and the leads locked in id order, so two transactions enrolling overlapping
    batches (a rebalance replays records) wait for each other and never deadlock.
    """
    leads = sorted(set(lead_ids))
    if not leads:
        return {}
    now = now or await database_now(conn)
    cursor = conn.cursor(row_factory=class_row(_Match))
    await cursor.execute(_MATCHES, (leads,))
    matches = await _triggered(conn, await cursor.fetchall(), now)
    ids = [enrollment_id(m.lead_id, m.sequence_id) for m in matches]
    inserted: set[object] = set()
    if matches:
        first_runs = [next_send_time(due_after(now, m.delay_s), window_of(m.send_window), m.timezone) for m in matches]
        returned = await conn.execute(
            _INSERT,
            (
                ids,
                [m.lead_id for m in matches],
                [m.sequence_id for m in matches],
                [m.revision for m in matches],
                first_runs,
                [m.timezone for m in matches],
            ),
        )
        inserted = {row["id"] for row in await returned.fetchall()}
    created = [
        EnrollmentRef(new_id, m.lead_id, m.sequence_id, m.revision)
        for new_id, m in zip(ids, matches, strict=True)
        if new_id in inserted
    ]
    await conn.execute(_MARK_ENROLLED, (leads,))
    if lifecycle_topic is not None:
        await announce_started(conn, lifecycle_topic, created)
    metrics.ENROLLMENTS.inc(len(created))
    enrolled: dict[uuid.UUID, list[uuid.UUID]] = {lead: [] for lead in leads}
    for enrollment in created:
        enrolled[enrollment.lead_id].append(enrollment.enrollment_id)
    return enrolled


async def _triggered(conn: Connection, matches: list[_Match], now: datetime) -> list[_Match]:
    """The matches whose Sequence has no ``trigger.when``, or one that is true for the lead (counted
    when not); the facts of every gated lead are read in one statement."""
    rules = await revision_rules(conn, {m.rules_key for m in matches if m.has_rules})
    whens = {
        m: rule.trigger_when
        for m in matches
        if (rule := rules.get(m.rules_key)) is not None and rule.trigger_when is not None
    }
    facts = await load_condition_facts(conn, sorted({m.lead_id for m in whens}), now) if whens else {}
    triggered = []
    for match in matches:
        when = whens.get(match)
        if when is not None:
            lead_facts = facts.get(match.lead_id)
            try:
                if lead_facts is None or not evaluate(when, lead_facts):
                    metrics.ENROLLMENTS_NOT_TRIGGERED.labels("false").inc()
                    continue
            except ConditionError as error:
                log.warning("trigger.when failed; the lead is not enrolled", extra={"error": str(error)})
                metrics.ENROLLMENTS_NOT_TRIGGERED.labels("failed").inc()
                continue
        triggered.append(match)
    return triggered


async def enroll_lead(
    conn: Connection, lead_id: uuid.UUID, *, now: datetime | None = None, lifecycle_topic: str | None = None
) -> list[uuid.UUID]:
    """:func:`enroll_leads` for one lead: its new enrollments."""
    return (await enroll_leads(conn, [lead_id], now=now, lifecycle_topic=lifecycle_topic))[lead_id]
