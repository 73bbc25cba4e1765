"""Custom events: what a customer's own systems tell about a lead (``purchased``, ``trial-started``),
stored as ``events`` rows so Sequence conditions react to them and a lead's timeline shows them.

Writing the row is all it takes to wake the lead's waiting enrollments: a trigger of migration 0011
moves them due, indexed by lead, in the same transaction. An Idempotency-Key makes a retry return the
first event: the key (scoped by client) becomes the row's ``dedupe_key``, and the request's hash is
kept in ``detail`` so the same key with another body is refused.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from proto.http import CustomEventSubmission, EventReceipt, FieldError
from proto.messages import LeadCustomEvent
from services.common.db import Connection
from services.common.outbox import enqueue_message
from services.intake.idempotency import IdempotencyKeyReused
from services.intake.validation import InvalidLead

# The platform's own event names (and its internal records): a custom event may not pretend to be one.
RESERVED_EVENT_TYPES = frozenset(
    {"sent", "opened", "clicked", "bounced", "complained", "unsubscribed", "failed", "dead", "skipped", "replayed"}
)
MAX_PROPERTIES_BYTES = 8192
# The id of a custom event's lead.custom_event message derives from its events row.
ANNOUNCEMENT_NAMESPACE = uuid.UUID("9c2e4f81-5a7d-4b36-8e10-d3f6a2b9c745")
# A custom event may say it happened earlier (an import), not later than a clock skew allows.
MAX_FUTURE_SKEW = timedelta(minutes=5)


class UnknownLead(Exception):
    """No lead with that id (or address): it was never accepted, or it was erased."""


@dataclass(frozen=True)
class EventRequest:
    """A validated custom event, for one lead (by id) or for an address (its newest lead)."""

    submission: CustomEventSubmission
    lead_id: uuid.UUID | None
    email_normalized: str | None
    idempotency: tuple[str, str] | None  # (scope, key)
    request_hash: str


def check_custom_event(submission: CustomEventSubmission, *, now: datetime, by_email: bool) -> None:
    """Raise :class:`InvalidLead` (422, naming each field) for what the schema cannot say."""
    errors = []
    if submission.type in RESERVED_EVENT_TYPES:
        errors.append(FieldError(field="/type", reason=f"{submission.type!r} is one of the platform's own events"))
    if len(msgspec.json.encode(submission.properties)) > MAX_PROPERTIES_BYTES:
        errors.append(FieldError(field="/properties", reason=f"more than {MAX_PROPERTIES_BYTES} bytes of JSON"))
    if submission.occurred_at is not None:
        if submission.occurred_at.tzinfo is None:
            errors.append(FieldError(field="/occurred_at", reason="needs a time zone offset (RFC 3339)"))
        elif submission.occurred_at > now + MAX_FUTURE_SKEW:
            errors.append(FieldError(field="/occurred_at", reason="is in the future"))
    if by_email and submission.email is None:
        errors.append(FieldError(field="/email", reason="is required"))
    if not by_email and submission.email is not None:
        errors.append(FieldError(field="/email", reason="is not allowed here: the lead is named by the path"))
    if errors:
        raise InvalidLead(errors)


def request_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def record_custom_event(conn: Connection, request: EventRequest, *, announce_topic: str) -> EventReceipt:
    """Store the event for its lead and queue its ``lead.custom_event`` on ``announce_topic`` (its id,
    lead and type; never its properties), inside the caller's transaction; a repeated Idempotency-Key
    returns the first event and announces nothing (:class:`IdempotencyKeyReused` when the body
    differs). Raises :class:`UnknownLead` when no lead matches."""
    lead_id = request.lead_id
    if lead_id is None:
        cursor = await conn.execute(
            "SELECT id FROM leads WHERE email_normalized = %s ORDER BY created_at DESC LIMIT 1",
            (request.email_normalized,),
        )
        row = await cursor.fetchone()
        if row is None:
            raise UnknownLead
        lead_id = row["id"]  # type: ignore[assignment]
    dedupe_key = None
    if request.idempotency is not None:
        scope, key = request.idempotency
        dedupe_key = "custom:" + hashlib.sha256(f"{scope} {key}".encode()).hexdigest()
        # Concurrent retries of one key serialize here, so exactly one inserts.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (dedupe_key,))
        cursor = await conn.execute("SELECT id, lead_id, detail FROM events WHERE dedupe_key = %s", (dedupe_key,))
        existing = await cursor.fetchone()
        if existing is not None:
            if existing["detail"] != request.request_hash:
                raise IdempotencyKeyReused
            return EventReceipt(id=existing["id"], lead_id=existing["lead_id"], duplicate=True)  # type: ignore[arg-type]
    submission = request.submission
    cursor = await conn.execute(
        """INSERT INTO events (lead_id, type, properties, occurred_at, detail, dedupe_key)
           SELECT l.id, %s, %s::jsonb, COALESCE(%s, now()), %s, %s FROM leads l WHERE l.id = %s
           RETURNING id, occurred_at""",
        (
            submission.type,
            msgspec.json.encode(submission.properties).decode(),
            submission.occurred_at,
            request.request_hash if dedupe_key else "",
            dedupe_key,
            lead_id,
        ),
    )
    inserted = await cursor.fetchone()
    if inserted is None:
        raise UnknownLead
    event_id = int(inserted["id"])  # type: ignore[call-overload]
    await enqueue_message(
        conn,
        announce_topic,
        str(lead_id),
        LeadCustomEvent(
            id=uuid.uuid5(ANNOUNCEMENT_NAMESPACE, str(event_id)),
            occurred_at=inserted["occurred_at"],  # type: ignore[arg-type]
            event_id=event_id,
            lead_id=lead_id,  # type: ignore[arg-type]
            event=submission.type,
        ),
    )
    return EventReceipt(id=inserted["id"], lead_id=lead_id, duplicate=False)  # type: ignore[arg-type]
