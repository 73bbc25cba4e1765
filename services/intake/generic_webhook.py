"""The generic bounce/complaint webhook format: its signature and its body, as plain functions.

A JSON body signed with ``WEBHOOK_SECRET``: ``Webhook-Timestamp: <unix seconds>`` and
``Webhook-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`` (several ``v1=`` values,
comma-separated, are accepted while the secret rotates); the timestamp must be within
``WEBHOOK_TOLERANCE_S``, so a captured request cannot be replayed later. The signature scheme is the
one of signed API requests (:mod:`services.common.signatures`). Body: ``{"events": [{"id", "type":
"bounced"|"complained", "email", "message_id"?, "bounce_type": "permanent"|"transient", "detail"?}]}``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec

from proto.http import FieldError
from services.common.errors import CallerError
from services.common.signatures import SignatureTexts, verify_timestamped_signature
from services.intake.bodies import decode_json
from services.intake.provider_events import ProviderEvent

WEBHOOK_SIGNATURE_TEXTS = SignatureTexts(
    expired="Webhook-Timestamp is too far from the current time.", mismatch="The signature does not match."
)


class GenericEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    type: Literal["bounced", "complained"]
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
    message_id: uuid.UUID | None = None
    bounce_type: Literal["permanent", "transient"] = "permanent"
    detail: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class GenericPayload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    events: Annotated[list[GenericEvent], msgspec.Meta(min_length=1, max_length=500)]


class UnsignedWebhook(CallerError):
    """The webhook request carries no usable signature headers (401)."""

    message = "Sign the request: Webhook-Timestamp and Webhook-Signature headers are required."


class MalformedWebhookTimestamp(UnsignedWebhook):
    """Webhook-Timestamp is not a Unix time (401)."""

    message = "Webhook-Timestamp must be a Unix time in seconds."


class InvalidWebhookBody(Exception):
    """The body is JSON but not valid events (422, naming the field)."""

    def __init__(self, error: FieldError) -> None:
        super().__init__(error.reason)
        self.errors = [error]


def verify_generic_request(
    secret: str, timestamp: str | None, signatures: str | None, body: bytes, *, tolerance_s: float, now: float
) -> None:
    """Return if the request is signed with ``secret`` and recent; raise :class:`UnsignedWebhook`,
    :class:`MalformedWebhookTimestamp` or a ``SignatureRejected`` otherwise."""
    if not timestamp or not signatures:
        raise UnsignedWebhook
    try:
        int(timestamp)
    except ValueError:
        raise MalformedWebhookTimestamp from None
    offered = [part.strip().removeprefix("v1=") for part in signatures.split(",") if part.strip().startswith("v1=")]
    verify_timestamped_signature(
        secret, timestamp, offered, body, tolerance_s=tolerance_s, now=now, texts=WEBHOOK_SIGNATURE_TEXTS
    )


def parse_generic(body: bytes) -> list[ProviderEvent]:
    """The events of a generic webhook body; :class:`InvalidWebhookBody` naming the field, or
    ``MalformedBody`` when it is not JSON."""
    try:
        payload = decode_json(body, GenericPayload)
    except msgspec.ValidationError as error:
        path, _, reason = str(error).rpartition(" - at `")
        pointer = reason.rstrip("`").removeprefix("$").replace("[", "/").replace("]", "").replace(".", "/") or "/"
        raise InvalidWebhookBody(FieldError(field=pointer, reason=path or str(error))) from error
    return [
        ProviderEvent(
            event_id=event.id,
            kind=event.type,
            email=event.email,
            permanent=event.bounce_type == "permanent",
            detail=event.detail,
            message_id=event.message_id,
        )
        for event in payload.events
    ]
