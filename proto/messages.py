"""Kafka messages.

Every message is a JSON object carrying the envelope fields ``id`` (stable, used for idempotency),
``type`` (the tag that selects the Struct), ``occurred_at`` and ``schema_version``. The tag makes
:data:`AnyMessage` a tagged union, so a consumer decodes any message of a topic in one call.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

SCHEMA_VERSION = 1


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """The envelope shared by every message."""

    id: uuid.UUID
    occurred_at: datetime
    schema_version: int = SCHEMA_VERSION


class LeadAccepted(Message, frozen=True, kw_only=True, tag="lead.accepted"):
    """A lead was accepted and stored; the scheduler enrolls it. Key: lead id."""

    lead_id: uuid.UUID
    source: str
    tags: list[str] = []
    # The intake request that created the lead, for tracing a lead from its HTTP request through Kafka.
    request_id: str | None = None


# The lead.accepted that a double opt-in confirmation queues has an id of its own, uuid5 of this and the
# lead id (the first one's id is the lead's): consumers tell a confirmation from an acceptance by it.
CONFIRMED_NAMESPACE = uuid.UUID("5b0f7c1e-3d2a-4e8b-9c61-0a7d4f2e8b13")


def confirmed_lead_message_id(lead_id: uuid.UUID) -> uuid.UUID:
    """The id of the ``lead.accepted`` queued when ``lead_id`` confirmed its address."""
    return uuid.uuid5(CONFIRMED_NAMESPACE, str(lead_id))


class EmailDispatch(Message, frozen=True, kw_only=True, tag="email.dispatch"):
    """Send one step of one enrollment. Key: enrollment id. ``id`` is the message's own id.

    Carries identifiers only: the dispatcher reads the lead and the step's content from PostgreSQL,
    which is the system of record, so a stale command can never send stale content.
    """

    message_id: uuid.UUID
    enrollment_id: uuid.UUID
    lead_id: uuid.UUID
    attempt: int = 1


class ConfirmationRequested(Message, frozen=True, kw_only=True, tag="lead.confirmation_requested"):
    """Send the double opt-in confirmation email ``id`` (a ``confirmation_emails`` row) to the lead.
    Key: lead id. Travels on the ``email.dispatch`` topic, so the dispatcher's send path (its SMTP pool,
    its shared rate, its suppression check) carries it; it is not a Sequence message.
    """

    lead_id: uuid.UUID


class EmailEvent(Message, frozen=True, kw_only=True, tag="email.event"):
    """Something happened to a message (sent, failed, dead, skipped, opened, clicked, unsubscribed,
    bounced, complained). Key: message id.

    Carries the lead, the Sequence, its revision and the step, so a consumer needs no lookup to
    attribute it; ``automated`` marks opens and clicks by mail-privacy proxies and link scanners.
    """

    message_id: uuid.UUID
    event: str
    detail: str = ""
    lead_id: uuid.UUID | None = None
    sequence_id: uuid.UUID | None = None
    revision: int | None = None
    step: str | None = None
    step_position: int | None = None
    automated: bool = False


class EmailDeadLettered(Message, frozen=True, kw_only=True, tag="email.dead_lettered"):
    """A message that cannot be delivered, with the reason. Key: message id."""

    message_id: uuid.UUID
    enrollment_id: uuid.UUID
    attempts: int
    reason: str


class LeadSuppressed(Message, frozen=True, kw_only=True, tag="lead.suppressed"):
    """An address must never be mailed again (unsubscribed, bounced, complained). Key: email hash.

    Carries the SHA-256 of the normalized address (``services.common.identity.email_hash``), never the
    address; the scheduler cancels every active enrollment of it.
    """

    email_hash: str
    reason: str


class LeadErased(Message, frozen=True, kw_only=True, tag="lead.erased"):
    """A lead was erased (GDPR): its rows are gone, only a keyed-hash suppression stays. Key: lead id.

    Carries the lead id alone, written after the erasure's scrub of the outbox, so it survives it: the
    id names no one once the lead is gone, and a receiver needs it to erase its own copy.
    """

    lead_id: uuid.UUID


class EnrollmentStarted(Message, frozen=True, kw_only=True, tag="enrollment.started"):
    """A lead was enrolled into a Sequence. Key: lead id."""

    enrollment_id: uuid.UUID
    lead_id: uuid.UUID
    sequence_id: uuid.UUID
    revision: int


class EnrollmentEnded(Message, frozen=True, kw_only=True, tag="enrollment.ended"):
    """An enrollment ended. Key: lead id. ``outcome`` is ``completed`` (its last step was queued) or
    ``exited`` (it left early; ``reason`` says why: ``goal``, ``unsubscribed``)."""

    enrollment_id: uuid.UUID
    lead_id: uuid.UUID
    sequence_id: uuid.UUID
    revision: int
    outcome: str
    reason: str | None = None


class LeadCustomEvent(Message, frozen=True, kw_only=True, tag="lead.custom_event"):
    """A customer's system told about a lead (``POST /v1/leads/{id}/events``). Key: lead id.

    Its ``events`` row id and type only: the properties are the customer's free-form JSON (they may
    name the person) and stay in PostgreSQL, within erasure's reach.
    """

    event_id: int
    lead_id: uuid.UUID
    event: str


AnyMessage = (
    LeadAccepted
    | EmailDispatch
    | ConfirmationRequested
    | EmailEvent
    | EmailDeadLettered
    | LeadSuppressed
    | LeadErased
    | EnrollmentStarted
    | EnrollmentEnded
    | LeadCustomEvent
)
