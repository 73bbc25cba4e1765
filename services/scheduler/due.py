"""Emitting the steps that are due: the scheduler's hot loop, set-based.

One claim query takes a batch of due enrollments with ``FOR UPDATE SKIP LOCKED`` (replicas share the
work without blocking each other), then three statements write the whole batch: the message rows,
their ``email.dispatch`` outbox rows, and the advanced enrollments. The send window is checked again at
claim time, so a step held by a pause or an outage past its window waits for the next opening.

Enrollments of revisions with rules (conditions or A/B variants) take a second path inside the same
batch: their leads' facts are read in one query, and :func:`services.common.step_rules.decide_step`
says for each whether to exit, skip, wait, fail or send (and which variant); skips, failures and exits
are recorded as ``events`` rows (``step.skipped``, ``step.failed``, ``enrollment.exited``) that a lead's
timeline reads. Revisions without rules never pay for any of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.common import metrics
from services.common.clock import database_now
from services.common.db import Connection
from services.common.durations import due_after
from services.common.enrollment_events import EnrollmentRef, announce_ended
from services.common.message_lifecycle import transitions as lifecycle
from services.common.message_lifecycle.transitions import NewMessage
from services.common.send_window import Window, next_send_time
from services.common.step_rules import Action, RevisionRules, choose_variant, decide_step
from services.scheduler.enrollment import message_id, revision_key, revision_rules, window_of
from services.scheduler.facts import load_condition_facts


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
       r.send_window::text AS send_window, e.timezone, nxt.delay_s AS next_delay_s,
       r.has_rules, r.created_at AS revision_created_at, e.resume_at, e.wait_deadline,
       s.namespace || '/' || s.name AS sequence_name
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
SET next_step = u.next_step, next_run_at = u.next_run_at, status = u.status, updated_at = now(),
    resume_at = NULL, wait_deadline = u.wait_deadline, exit_reason = u.exit_reason
FROM unnest(%s::uuid[], %s::int[], %s::timestamptz[], %s::text[], %s::timestamptz[], %s::text[])
     AS u(id, next_step, next_run_at, status, wait_deadline, exit_reason)
WHERE e.id = u.id
"""

# The scheduler's records of what it did instead of sending: read by a lead's timeline and by stats.
RECORD_ENROLLMENT_EVENTS = """
INSERT INTO events (lead_id, enrollment_id, sequence_id, revision, step_position, type, detail, occurred_at)
SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::int[], %s::int[], %s::text[], %s::text[],
                     %s::timestamptz[])
"""

Updates = tuple[list[uuid.UUID], list[int], list[datetime | None], list[str], list[datetime | None], list[str | None]]


async def emit_due_steps(
    conn: Connection, *, limit: int, topic: str, now: datetime | None = None, lifecycle_topic: str | None = None
) -> list[EmittedStep]:
    """Claim up to ``limit`` enrollments whose next step is due at ``now`` (default: the database's
    time), queue each step's message and its ``email.dispatch`` command, and advance the enrollment
    (or complete it after its last step); all inside the caller's transaction.

    Enrollments of paused Sequences are held, never skipped. A step due outside its send window is
    not sent: its enrollment moves to the window's next opening. The next step is due its delay after
    ``now``, moved into the window. With ``lifecycle_topic``, every enrollment ended here is announced
    there (``enrollment.ended``: completed, or exited with its reason, e.g. ``goal``).
    """
    now = now or await database_now(conn)
    cursor = await conn.execute(CLAIM_DUE, {"now": now, "limit": limit})
    rows = await cursor.fetchall()
    if not rows:
        return []
    candidates: list[EmittedStep] = []
    lead_of: dict[uuid.UUID, uuid.UUID] = {}
    sequence_of: dict[uuid.UUID, uuid.UUID] = {}
    variant_of: dict[uuid.UUID, str | None] = {}
    updates: Updates = ([], [], [], [], [], [])
    records: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID, int, int, str, str]] = []
    keys = [revision_key(r) if r["has_rules"] else None for r in rows]
    rules = await revision_rules(conn, {key for key in keys if key is not None})
    rules_of_row = [None if key is None else rules.get(key) for key in keys]
    with_facts = [
        (row, revision)
        for row, revision in zip(rows, rules_of_row, strict=True)
        if revision is not None and revision.needs_facts(int(row["next_step"]))  # type: ignore[call-overload]
    ]
    facts = await load_condition_facts(
        conn,
        [row["lead_id"] for row, _ in with_facts],  # type: ignore[misc]
        now,
        lead_rows=[row["lead_id"] for row, revision in with_facts if revision.names_lead],  # type: ignore[misc]
        event_types=_event_types_read(with_facts),
    )
    for row, revision_rules_ in zip(rows, rules_of_row, strict=True):
        enrollment: uuid.UUID = row["id"]  # type: ignore[assignment]
        lead: uuid.UUID = row["lead_id"]  # type: ignore[assignment]
        sequence: uuid.UUID = row["sequence_id"]  # type: ignore[assignment]
        position = int(row["next_step"])  # type: ignore[call-overload]
        revision = int(row["revision"])  # type: ignore[call-overload]
        window = window_of(row["send_window"])
        timezone: str | None = row["timezone"]  # type: ignore[assignment]
        resume_at: datetime | None = row["resume_at"]  # type: ignore[assignment]
        wait_deadline: datetime | None = row["wait_deadline"]  # type: ignore[assignment]
        variant: str | None = None
        if revision_rules_ is not None and position < len(revision_rules_.steps):
            decision = decide_step(
                revision_rules_,
                position,
                facts.get(lead),
                now=now,
                woken_early=resume_at is not None and resume_at > now,
                wait_deadline=wait_deadline,
            )
            if decision.action is Action.EXIT:
                _add(updates, enrollment, position, None, "completed", exit_reason="goal")
                records.append((lead, enrollment, sequence, revision, position, "enrollment.exited", "goal"))
                metrics.ENROLLMENT_EXITS.labels("goal").inc()
                continue
            if decision.action is Action.RESTORE:
                _add(updates, enrollment, position, resume_at, "active", wait_deadline=wait_deadline)
                continue
            if decision.action is Action.WAIT:
                _add(
                    updates,
                    enrollment,
                    position,
                    decision.wait_deadline,
                    "active",
                    wait_deadline=decision.wait_deadline,
                )
                continue
            if decision.action in (Action.SKIP, Action.FAIL):
                kind = "step.skipped" if decision.action is Action.SKIP else "step.failed"
                records.append((lead, enrollment, sequence, revision, position, kind, decision.reason))
                metrics.STEPS_NOT_SENT.labels(decision.action.value).inc()
                _advance(updates, enrollment, position, row["next_delay_s"], now, window, timezone)  # type: ignore[arg-type]
                continue
            variant = choose_variant(lead, sequence, revision_rules_.steps[position])
            if variant is not None:
                metrics.VARIANT_EVENTS.labels(
                    row["sequence_name"], revision_rules_.steps[position].name, variant, "queued"
                ).inc()
        send_at = next_send_time(now, window, timezone)
        if send_at > now:
            _add(updates, enrollment, position, send_at, "active", wait_deadline=wait_deadline)
            continue
        candidates.append(EmittedStep(enrollment, message_id(enrollment, position, revision), position, revision))
        lead_of[enrollment] = lead
        sequence_of[enrollment] = sequence
        variant_of[enrollment] = variant
        _advance(updates, enrollment, position, row["next_delay_s"], now, window, timezone)  # type: ignore[arg-type]
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
                    variant_of[c.enrollment_id],
                )
                for c in candidates
            ],
            dispatch_topic=topic,
            now=now,
        )
        # A message that already exists was queued by an earlier run: its command went out with it.
        emitted = [c for c in candidates if c.message_id in inserted]
    await conn.execute(ADVANCE_ENROLLMENTS, updates)
    if lifecycle_topic is not None:
        await _announce_ends(conn, lifecycle_topic, rows, updates)
    if records:
        await conn.execute(RECORD_ENROLLMENT_EVENTS, [*map(list, zip(*records, strict=True)), [now] * len(records)])
    metrics.STEPS_EMITTED.inc(len(emitted))
    return emitted


def _event_types_read(due: Sequence[tuple[Mapping[str, object], RevisionRules]]) -> frozenset[str] | None:
    """The event types any of these due steps' conditions can read (None: any), so the batch's facts
    query returns only those: the facts of a lead are shared by its due steps in the batch."""
    kinds: frozenset[str] = frozenset()
    for row, rules in due:
        read = rules.event_types_read(int(row["next_step"]))  # type: ignore[call-overload]
        if read is None:
            return None
        kinds |= read
    return kinds


async def _announce_ends(conn: Connection, topic: str, rows: Sequence[Mapping[str, object]], updates: Updates) -> None:
    """Announce the enrollments this batch ended: completed after the last step, or exited (its reason)."""
    claimed = {row["id"]: row for row in rows}
    ended: dict[str | None, list[EnrollmentRef]] = {}
    ids, _, _, statuses, _, reasons = updates
    for enrollment, status, reason in zip(ids, statuses, reasons, strict=True):
        if status == "completed":
            row = claimed[enrollment]
            ref = EnrollmentRef(enrollment, row["lead_id"], row["sequence_id"], int(row["revision"]))  # type: ignore[arg-type, call-overload]
            ended.setdefault(reason, []).append(ref)
    for reason, enrollments in ended.items():
        if reason is None:
            await announce_ended(conn, topic, enrollments, outcome="completed")
        else:
            await announce_ended(conn, topic, enrollments, outcome="exited", reason=reason)


def _advance(
    updates: Updates,
    enrollment: uuid.UUID,
    position: int,
    next_delay_s: int | None,
    now: datetime,
    window: Window | None,
    timezone: str | None,
) -> None:
    """Move on from the step at ``position`` (sent, skipped or failed): the next step is due its delay
    after ``now``, moved into the window; after the last step the enrollment completes."""
    if next_delay_s is None:
        _add(updates, enrollment, position + 1, None, "completed")
    else:
        due = due_after(now, int(next_delay_s))
        _add(updates, enrollment, position + 1, next_send_time(due, window, timezone), "active")


def _add(
    updates: Updates,
    enrollment: uuid.UUID,
    next_step: int,
    next_run_at: datetime | None,
    status: str,
    *,
    wait_deadline: datetime | None = None,
    exit_reason: str | None = None,
) -> None:
    ids, steps, runs, statuses, deadlines, reasons = updates
    ids.append(enrollment)
    steps.append(next_step)
    runs.append(next_run_at)
    statuses.append(status)
    deadlines.append(wait_deadline)
    reasons.append(exit_reason)
