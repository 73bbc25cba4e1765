"""POST /v1/webhooks/email-events: bounces and complaints from the mail provider.

Two adapters on one URL:

* **generic** (any provider or relay): a JSON body signed with WEBHOOK_SECRET. Headers
  ``Webhook-Timestamp: <unix seconds>`` and ``Webhook-Signature: v1=<hex HMAC-SHA256 of
  "<timestamp>.<body>">`` (several ``v1=`` values, comma-separated, are accepted while the secret
  rotates); the timestamp must be within WEBHOOK_TOLERANCE_S, so a captured request cannot be replayed
  later. Body: ``{"events": [{"id", "type": "bounced"|"complained", "email", "message_id"?,
  "bounce_type": "permanent"|"transient", "detail"?}]}``.
* **Amazon SES via SNS**, recognised by the ``x-amz-sns-message-type`` header: the SNS signature is
  verified (``services.intake.sns``), the topic must be one of SNS_TOPIC_ARNS, and a subscription
  confirmation is confirmed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.params import HeaderParameter

from proto.http import FieldError, Problem
from services.common.config import IntakeSettings
from services.common.db import transaction
from services.common.runtime import Runtime
from services.intake.auth import NO_RATE_LIMIT
from services.intake.problems import PROBLEM_JSON, ProblemError, problem_responses
from services.intake.provider_events import ProviderEvent, apply_provider_event
from services.intake.sns import SnsRejected, SnsUnavailable, SnsVerifier, ses_events


class GenericEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    type: Literal["bounced", "complained"]
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
    message_id: uuid.UUID | None = None
    bounce_type: Literal["permanent", "transient"] = "permanent"
    detail: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class GenericPayload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    events: Annotated[list[GenericEvent], msgspec.Meta(min_length=1, max_length=500)]


class WebhookReceipt(msgspec.Struct, frozen=True, kw_only=True):
    accepted: int


class InvalidWebhookBody(Exception):
    def __init__(self, error: FieldError) -> None:
        super().__init__(error.reason)
        self.error = error


def generic_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``v1`` signature of a generic webhook request (what a sender computes)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_generic_request(
    secret: str, timestamp: str | None, signatures: str | None, body: bytes, *, tolerance_s: float, now: float
) -> None:
    """Raise a 401 problem unless the request is signed with ``secret`` and recent."""
    if not timestamp or not signatures:
        raise ProblemError(401, "Sign the request: Webhook-Timestamp and Webhook-Signature headers are required.")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise ProblemError(401, "Webhook-Timestamp must be a Unix time in seconds.") from None
    if abs(now - sent_at) > tolerance_s:
        raise ProblemError(401, "Webhook-Timestamp is too far from the current time.")
    expected = generic_signature(secret, timestamp, body)
    offered = [part.strip().removeprefix("v1=") for part in signatures.split(",") if part.strip().startswith("v1=")]
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise ProblemError(401, "The signature does not match.")


def parse_generic(body: bytes) -> list[ProviderEvent]:
    """The events of a generic webhook body; a 400 or a 422 naming the field otherwise."""
    try:
        payload = msgspec.json.decode(body, type=GenericPayload)
    except msgspec.ValidationError as error:
        path, _, reason = str(error).rpartition(" - at `")
        pointer = reason.rstrip("`").removeprefix("$").replace("[", "/").replace("]", "").replace(".", "/") or "/"
        raise InvalidWebhookBody(FieldError(field=pointer, reason=path or str(error))) from error
    # Invalid UTF-8 is not a DecodeError, and deep nesting exhausts the decoder's recursion limit.
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ProblemError(400, f"The body is not valid JSON: {error}") from error
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


async def _apply(state: State, adapter: str, events: list[ProviderEvent]) -> None:
    runtime: Runtime = state.runtime
    settings: IntakeSettings = state.settings
    async with transaction(runtime.pool) as conn:
        for event in events:
            await apply_provider_event(
                conn,
                event,
                adapter=adapter,
                events_topic=settings.topic_email_events,
                suppressed_topic=settings.topic_leads_suppressed,
            )


async def _sns(request: Request[Any, Any, State], state: State, body: bytes) -> Response[WebhookReceipt]:
    verifier: SnsVerifier = state.sns_verifier
    if not verifier.enabled:
        raise ProblemError(404, "The SES/SNS adapter is not configured (SNS_TOPIC_ARNS).")
    try:
        message = msgspec.json.decode(body)
    # Invalid UTF-8 is not a DecodeError, and deep nesting exhausts the decoder's recursion limit.
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ProblemError(400, f"The body is not valid JSON: {error}") from error
    if not isinstance(message, dict):
        raise ProblemError(400, "The body must be an SNS message (a JSON object).")
    try:
        await verifier.verify(message)
        if message.get("Type") == "SubscriptionConfirmation":
            await verifier.confirm_subscription(message)
            return Response(WebhookReceipt(accepted=0), status_code=200)
    except SnsRejected as error:
        raise ProblemError(401, f"The SNS message is not trusted: {error}.") from error
    except SnsUnavailable as error:
        raise ProblemError(503, "Amazon SNS is unreachable; retry later.", {"Retry-After": "30"}) from error
    if message.get("Type") != "Notification":
        return Response(WebhookReceipt(accepted=0), status_code=200)
    events = ses_events(str(message.get("Message", "")), str(message.get("MessageId", "")))
    await _apply(state, "ses", events)
    return Response(WebhookReceipt(accepted=len(events)), status_code=200)


@post(
    "/v1/webhooks/email-events",
    opt={NO_RATE_LIMIT: True},
    status_code=200,
    responses=problem_responses(400, 401, 404, 413, 422, 503),
    summary="Bounces and complaints from the mail provider",
    description=(
        "A generic HMAC-signed JSON format (Webhook-Timestamp, Webhook-Signature: v1=<hex>), or Amazon SES "
        "notifications via SNS (signature verified). Permanent bounces and complaints suppress the address."
    ),
)
async def email_events_webhook(
    request: Request[Any, Any, State],
    state: State,
    # Declared (not only read) so the API documents them; the body is read raw, as it was signed.
    webhook_timestamp: Annotated[
        str | None, HeaderParameter(name="Webhook-Timestamp", description="Unix seconds (generic format)")
    ] = None,
    webhook_signature: Annotated[
        str | None, HeaderParameter(name="Webhook-Signature", description="v1=<hex HMAC-SHA256> (generic format)")
    ] = None,
    sns_message_type: Annotated[
        str | None, HeaderParameter(name="x-amz-sns-message-type", description="Set by Amazon SNS")
    ] = None,
) -> Response[Any]:
    body = await request.body()
    if sns_message_type:
        return await _sns(request, state, body)
    settings: IntakeSettings = state.settings
    if not settings.webhook_secret:
        raise ProblemError(404, "The generic webhook is not configured (WEBHOOK_SECRET).")
    verify_generic_request(
        settings.webhook_secret,
        webhook_timestamp,
        webhook_signature,
        body,
        tolerance_s=settings.webhook_tolerance_s,
        now=time.time(),
    )
    try:
        events = parse_generic(body)
    except InvalidWebhookBody as invalid:
        problem = Problem(
            title="Invalid webhook body",
            status=422,
            detail="The events are not valid; see errors.",
            errors=[invalid.error],
        )
        return Response(msgspec.json.encode(problem), status_code=422, media_type=PROBLEM_JSON)
    await _apply(state, "generic", events)
    return Response(WebhookReceipt(accepted=len(events)), status_code=200)
