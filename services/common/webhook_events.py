"""What outgoing webhooks announce: the event types, and the one table from the platform's internal
messages to them.

Every row of :data:`MAPPINGS` says which internal message (its tag and, for ``email.event``, its
``event``) becomes which webhook event type and what its ``data`` holds. The delivery service consumes
the topics of :func:`webhook_source_topics` and asks :func:`webhook_event_of` about each message;
the intake accepts subscriptions to :data:`EVENT_TYPES`. To announce a new internal event, add a row
here (and its topic to :func:`webhook_source_topics` if it travels on a new one).

``data`` carries identifiers and facts, never the lead's address or name: a webhook body leaves the
platform's control (and its GDPR erasure), so a receiver that needs the person reads
``GET /v1/leads/{lead_id}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import get_args

import msgspec

from proto.http import WebhookEventType
from proto.messages import (
    AnyMessage,
    EmailEvent,
    EnrollmentEnded,
    EnrollmentStarted,
    LeadAccepted,
    LeadCustomEvent,
    LeadErased,
    confirmed_lead_message_id,
)
from services.common.config import BusSettings

# Sent when an endpoint is disabled after persistent failure (to the other endpoints subscribed to it).
ENDPOINT_DISABLED = "webhook_endpoint.disabled"

# Every type an endpoint may subscribe to (declared in proto/http.py, the API's contract). Those
# without a row in MAPPINGS are not published yet by the platform; subscribing ahead is allowed.
EVENT_TYPES: tuple[str, ...] = get_args(WebhookEventType)


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event as webhooks announce it. ``id`` is the internal message's id: an event fanned out
    twice (a Kafka redelivery) makes one delivery per endpoint."""

    id: uuid.UUID
    type: str
    occurred_at: datetime
    data: dict[str, object]


class WebhookBody(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON body of every webhook: ``{"type", "timestamp", "data"}``."""

    type: str
    timestamp: str
    data: dict[str, object]


def webhook_body(event: WebhookEvent) -> bytes:
    """The exact bytes sent (and signed) for ``event``; ``timestamp`` is RFC 3339 in UTC."""
    at = event.occurred_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return msgspec.json.encode(WebhookBody(type=event.type, timestamp=at, data=event.data))


def _lead_accepted(message: AnyMessage) -> dict[str, object]:
    assert isinstance(message, LeadAccepted)  # the table pairs the tag with this function
    return {"lead_id": str(message.lead_id), "source": message.source, "tags": list(message.tags)}


def _email_event(message: AnyMessage) -> dict[str, object]:
    assert isinstance(message, EmailEvent)  # the table pairs the tag with this function
    data: dict[str, object] = {
        "message_id": str(message.message_id),
        "lead_id": str(message.lead_id) if message.lead_id else None,
        "sequence_id": str(message.sequence_id) if message.sequence_id else None,
        "revision": message.revision,
        "step": message.step,
        "step_position": message.step_position,
    }
    if message.event in ("opened", "clicked"):
        data["automated"] = message.automated
    if message.detail:
        data["detail"] = message.detail
    return data


def _lead_erased(message: AnyMessage) -> dict[str, object]:
    assert isinstance(message, LeadErased)  # the table pairs the tag with this function
    return {"lead_id": str(message.lead_id)}


def _enrollment(message: AnyMessage) -> dict[str, object]:
    assert isinstance(message, EnrollmentStarted | EnrollmentEnded)  # the table pairs the tags with this
    data: dict[str, object] = {
        "enrollment_id": str(message.enrollment_id),
        "lead_id": str(message.lead_id),
        "sequence_id": str(message.sequence_id),
        "revision": message.revision,
    }
    if isinstance(message, EnrollmentEnded) and message.outcome == "exited":
        data["reason"] = message.reason
    return data


def _custom_event(message: AnyMessage) -> dict[str, object]:
    assert isinstance(message, LeadCustomEvent)  # the table pairs the tag with this function
    return {"event_id": message.event_id, "lead_id": str(message.lead_id), "event": message.event}


def _kind(message: AnyMessage) -> str | None:
    """What tells apart the messages of one tag: an email event's ``event``; an ended enrollment's
    ``outcome``; for ``lead.accepted``, ``confirmed`` when a double opt-in confirmation queued it (its
    id says so); else None."""
    if isinstance(message, EmailEvent):
        return message.event
    if isinstance(message, EnrollmentEnded):
        return message.outcome
    if isinstance(message, LeadAccepted) and message.id == confirmed_lead_message_id(message.lead_id):
        return "confirmed"
    return None


@dataclass(frozen=True)
class Mapping:
    """One row: the internal message ``tag`` and kind (see :func:`_kind`) → ``webhook_type``."""

    tag: str
    kind: str | None
    webhook_type: str
    data: Callable[[AnyMessage], dict[str, object]]


# The one table: every type of EVENT_TYPES but webhook_endpoint.disabled (the delivery service's own).
MAPPINGS: tuple[Mapping, ...] = (
    Mapping("lead.accepted", None, "lead.accepted", _lead_accepted),
    Mapping("lead.accepted", "confirmed", "lead.confirmed", _lead_accepted),
    Mapping("lead.erased", None, "lead.erased", _lead_erased),
    Mapping("lead.custom_event", None, "lead.custom_event", _custom_event),
    Mapping("enrollment.started", None, "enrollment.started", _enrollment),
    Mapping("enrollment.ended", "completed", "enrollment.completed", _enrollment),
    Mapping("enrollment.ended", "exited", "enrollment.exited", _enrollment),
    Mapping("email.event", "sent", "email.sent", _email_event),
    Mapping("email.event", "opened", "email.opened", _email_event),
    Mapping("email.event", "clicked", "email.clicked", _email_event),
    Mapping("email.event", "bounced", "email.bounced", _email_event),
    Mapping("email.event", "complained", "email.complained", _email_event),
    Mapping("email.event", "unsubscribed", "email.unsubscribed", _email_event),
    Mapping("email.event", "dead", "email.dead", _email_event),
)
_BY_KEY = {(m.tag, m.kind): m for m in MAPPINGS}


def webhook_source_topics(settings: BusSettings) -> list[str]:
    """The topics whose messages :data:`MAPPINGS` maps."""
    return [settings.topic_leads_accepted, settings.topic_email_events, settings.topic_lifecycle_events]


def webhook_event_of(message: AnyMessage) -> WebhookEvent | None:
    """The webhook event ``message`` announces, or None when webhooks do not announce it."""
    tag = str(message.__struct_config__.tag)
    mapping = _BY_KEY.get((tag, _kind(message)))
    if mapping is None:
        return None
    return WebhookEvent(
        id=message.id, type=mapping.webhook_type, occurred_at=message.occurred_at, data=mapping.data(message)
    )
