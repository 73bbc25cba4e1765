"""HTTP bodies of the intake API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

# Constraints that document the API (OpenAPI, generated tests); the intake's validation enforces the
# same rules and more (services/intake/validation.py), reporting every invalid field at once.
Email = Annotated[str, msgspec.Meta(max_length=320, extra_json_schema={"format": "email"})]
Slug = Annotated[str, msgspec.Meta(pattern="^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")]
Name = Annotated[str, msgspec.Meta(max_length=100)]
Short = Annotated[str, msgspec.Meta(max_length=200)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Locale = Annotated[str, msgspec.Meta(pattern="^[A-Za-z]{2,3}([-_][A-Za-z]{4})?([-_]([A-Za-z]{2}|[0-9]{3}))?$")]
MetadataKey = Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")]


class Consent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the lead agreed to, in the words they saw, and when."""

    marketing: bool
    text: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    captured_at: datetime | None = None


class Utm(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Campaign parameters (``utm_*`` of the landing page), each at most 200 characters."""

    source: Short | None = None
    medium: Short | None = None
    campaign: Short | None = None
    term: Short | None = None
    content: Short | None = None


class LeadSubmission(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/leads``: a lead as a client sends it (after validation and sanitization).

    ``phone`` is stored in E.164; ``locale`` is a BCP 47 tag such as ``en-GB``; ``timezone`` an IANA
    name such as ``Europe/London``; ``metadata`` a flat map of short strings (at most 20 entries).
    """

    email: Email
    source: Slug
    consent: Consent
    first_name: Name | None = None
    last_name: Name | None = None
    phone: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    tags: Annotated[list[Tag], msgspec.Meta(max_length=20)] = []
    utm: Utm = Utm()
    locale: Locale | None = None
    timezone: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    metadata: Annotated[dict[MetadataKey, Short], msgspec.Meta(max_length=20)] = {}


class LeadReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``POST /v1/leads``: the lead's id, and whether it was a duplicate within the window."""

    id: uuid.UUID
    duplicate: bool


class FormReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a public form's ``POST /v1/leads`` (no credentials): always 202 and this, for a new
    lead, a duplicate or a bot alike, so an unauthenticated caller learns nothing about existing leads.
    With double opt-in the person gets a confirmation email."""

    status: Literal["received"]


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid field: where (a JSON pointer such as ``/consent/marketing``) and why."""

    field: str
    reason: str


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem details document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] = []


class ConsentRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The consent ledger entry of a lead: the flag, the exact words, when, and from where."""

    marketing: bool
    text: str | None
    captured_at: datetime | None
    recorded_at: datetime
    ip: str | None
    user_agent: str | None
    # Double opt-in: when the person confirmed the address (POST /confirm/{token}), from where.
    confirmed_at: datetime | None = None
    confirmed_ip: str | None = None
    confirmed_user_agent: str | None = None


class MessageView(msgspec.Struct, frozen=True, kw_only=True):
    """One email of an enrollment, as ``GET /v1/leads/{id}`` shows it."""

    id: uuid.UUID
    step_position: int
    status: str
    attempts: int
    queued_at: datetime
    sent_at: datetime | None


class EnrollmentView(msgspec.Struct, frozen=True, kw_only=True):
    """One Sequence the lead is enrolled in."""

    id: uuid.UUID
    sequence: str
    revision: int
    status: str
    next_step: int
    next_run_at: datetime | None
    created_at: datetime
    messages: list[MessageView]


class LeadView(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/leads/{id}``: the stored lead with its consent record, enrollments and messages."""

    id: uuid.UUID
    email: str
    source: str
    first_name: str | None
    last_name: str | None
    phone: str | None
    tags: list[str]
    utm: Utm
    locale: str | None
    timezone: str | None
    metadata: dict[str, str]
    consent: ConsentRecord
    created_at: datetime
    enrollments: list[EnrollmentView]


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One thing that happened to a lead. ``kind`` names it (``lead.accepted``, ``consent.recorded``,
    ``enrollment.started``, ``step.sent``, ``email.opened``, ``suppression.added``, ...; an event type
    without a mapping appears as ``event.<type>``); ``properties`` carries its details."""

    at: datetime
    kind: str
    properties: dict[str, object]


class LeadTimeline(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/leads/{id}/timeline``: one page, oldest first; ``next_cursor`` fetches the next one."""

    lead_id: uuid.UUID
    entries: list[TimelineEntry]
    next_cursor: str | None = None


class SuppressionView(msgspec.Struct, frozen=True, kw_only=True):
    """The address's suppression: it is never mailed again."""

    reason: str
    detail: str
    created_at: datetime


class ExportedLead(msgspec.Struct, frozen=True, kw_only=True):
    """One lead of the exported address with everything that happened to it."""

    lead: LeadView
    timeline: list[TimelineEntry]


class AddressExport(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/leads/export``: all data held for an address (GDPR Art. 15 access, Art. 20 portability)."""

    email: str
    exported_at: datetime
    leads: list[ExportedLead]
    suppression: SuppressionView | None = None


# --- Outgoing webhooks (services/outgoing_webhooks) ------------------------------------------------

# Every event type an endpoint may subscribe to (services/common/webhook_events.py says which the
# platform publishes and how each is made).
WebhookEventType = Literal[
    "lead.accepted",
    "lead.confirmed",
    "lead.erased",
    "lead.custom_event",
    "enrollment.started",
    "enrollment.completed",
    "enrollment.exited",
    "email.sent",
    "email.opened",
    "email.clicked",
    "email.bounced",
    "email.complained",
    "email.unsubscribed",
    "email.dead",
    "webhook_endpoint.disabled",
]


# The fields of an endpoint, the same in registration and update.
WebhookUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=2048, pattern="^https?://")]
WebhookEvents = Annotated[list[WebhookEventType], msgspec.Meta(min_length=1, max_length=64)]
WebhookDescription = Annotated[str, msgspec.Meta(max_length=500)]


class WebhookEndpointRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/webhook-endpoints``: where to send which events. ``url`` is http(s) and must not
    point to a loopback, private, link-local or metadata address."""

    url: WebhookUrl
    events: WebhookEvents
    description: WebhookDescription = ""


class WebhookEndpointUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PATCH /v1/webhook-endpoints/{id}``: the fields to change, each checked as at registration
    (absent = unchanged). ``enabled: true`` enables a disabled endpoint again (its failure state
    cleared); ``false`` stops deliveries to it until enabled."""

    url: WebhookUrl | msgspec.UnsetType = msgspec.UNSET
    events: WebhookEvents | msgspec.UnsetType = msgspec.UNSET
    description: WebhookDescription | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class WebhookEndpointView(msgspec.Struct, frozen=True, kw_only=True):
    """A registered endpoint (never its secret). ``status`` is ``enabled`` or ``disabled`` (after
    persistent failure, or by an admin; PATCH with ``enabled: true`` or retrying one of its deliveries
    enables it again)."""

    id: uuid.UUID
    url: str
    events: list[str]
    description: str
    status: str
    disabled_reason: str | None
    created_at: datetime
    disabled_at: datetime | None


class WebhookEndpointCreated(WebhookEndpointView, frozen=True, kw_only=True):
    """The answer to ``POST /v1/webhook-endpoints``: the endpoint and its signing secret
    (``whsec_…``), shown this once."""

    secret: str


class WebhookSecretRotated(WebhookEndpointView, frozen=True, kw_only=True):
    """The answer to ``POST /v1/webhook-endpoints/{id}/rotate-secret``: the new signing secret, shown
    this once; until ``previous_secret_expires_at`` deliveries carry signatures by both secrets."""

    secret: str
    previous_secret_expires_at: datetime


class WebhookEndpointList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/webhook-endpoints``: every endpoint, oldest first."""

    endpoints: list[WebhookEndpointView]


class WebhookDeliveryView(msgspec.Struct, frozen=True, kw_only=True):
    """One event sent (or to be sent) to one endpoint. ``id`` is the ``webhook-id`` header of every
    attempt. ``status``: ``pending`` (``next_attempt_at`` says when), ``delivered`` or ``failed`` (the
    retry schedule ran out). The last attempt's HTTP status, first KiB of response body and error are kept."""

    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    response_status: int | None
    response_body: str | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookDeliveryList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/webhook-endpoints/{id}/deliveries``: the most recent deliveries, newest first."""

    deliveries: list[WebhookDeliveryView]


# A custom event's type: a lower-case name without dots (dotted names are the platform's records).
EventType = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,63}\Z")]


class CustomEventSubmission(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/leads/{id}/events`` and ``POST /v1/events`` (which also takes ``email``):
    something the lead did that Sequences' conditions may react to (``purchased``, ``trial-started``)."""

    type: EventType
    properties: Annotated[dict[str, Any], msgspec.Meta(max_length=50)] = {}
    occurred_at: datetime | None = None
    email: Annotated[str, msgspec.Meta(max_length=320)] | None = None


class EventReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a custom event: its id and lead, and whether it repeats an earlier request
    (same Idempotency-Key and body)."""

    id: int
    lead_id: uuid.UUID
    duplicate: bool
