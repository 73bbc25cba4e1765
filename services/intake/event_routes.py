"""``POST /v1/leads/{id}/events`` and ``POST /v1/events``: custom events (scope ``events:write``).

Thin handlers: decode, check, call :func:`services.intake.custom_events.record_custom_event` in one
transaction, answer 201 (200 for a retry with the same Idempotency-Key). Errors are problem+json:
422 naming the field (a platform event name, a bad ``occurred_at``), 404 for an unknown lead.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.params import FromPath, HeaderParameter

from proto.http import CustomEventSubmission, EventReceipt, FieldError
from services.common import metrics
from services.common.clock import utcnow
from services.common.db import transaction
from services.intake.auth import client_ip, principal_of, requires_scope
from services.intake.authentication import trusted_networks
from services.intake.bodies import decode_json
from services.intake.custom_events import (
    EventRequest,
    UnknownLead,
    check_custom_event,
    record_custom_event,
    request_hash,
)
from services.intake.idempotency import valid_idempotency_key
from services.intake.injection import Ctx
from services.intake.problems import ProblemError, problem_responses
from services.intake.submission import idempotency_scope
from services.intake.validation import InvalidLead, normalize_email

_DESCRIPTION = (
    "Records something the lead did in the customer's own systems (type, optional properties and "
    "occurred_at), so Sequence conditions (when, waitFor, exitWhen) react to it; the lead's waiting "
    "enrollments are re-evaluated at once. The platform's own event names (sent, opened, clicked, "
    "bounced, complained, unsubscribed) are refused (422). An Idempotency-Key makes retries safe. "
    "Needs the events:write scope."
)


async def _record(
    request: Request[Any, Any, Any], ctx: Ctx, lead_id: uuid.UUID | None, idempotency_key: str | None
) -> Response[EventReceipt]:
    if request.content_type[0] != "application/json":
        raise ProblemError(415, "Send the event as a JSON object with Content-Type: application/json.")
    body = await request.body()
    try:
        submission = decode_json(body, CustomEventSubmission)
    except msgspec.ValidationError as error:
        raise InvalidLead([FieldError(field="/", reason=str(error))]) from None
    check_custom_event(submission, now=utcnow(), by_email=lead_id is None)
    email_normalized = None
    if submission.email is not None:
        try:
            _, email_normalized = normalize_email(submission.email)
        except ValueError as error:
            raise InvalidLead([FieldError(field="/email", reason=str(error))]) from None
    idempotency = None
    if idempotency_key is not None:
        if not valid_idempotency_key(idempotency_key):
            raise InvalidLead([FieldError(field="Idempotency-Key", reason="1 to 255 visible ASCII characters")])
        scope = idempotency_scope(principal_of(request), client_ip(request, trusted_networks(ctx.settings)))
        idempotency = (scope, idempotency_key)
    event = EventRequest(submission, lead_id, email_normalized, idempotency, request_hash(body))
    try:
        async with transaction(ctx.pool) as conn:
            receipt = await record_custom_event(conn, event, announce_topic=ctx.settings.topic_lifecycle_events)
    except UnknownLead:
        raise ProblemError(404, "No such lead (it may have been erased).") from None
    metrics.CUSTOM_EVENTS.labels("duplicate" if receipt.duplicate else "recorded").inc()
    return Response(receipt, status_code=200 if receipt.duplicate else 201)


@post(
    "/v1/leads/{lead_id:uuid}/events",
    status_code=201,
    summary="Record a custom event for a lead",
    description=_DESCRIPTION,
    guards=[requires_scope("events:write")],
    responses=problem_responses(400, 401, 403, 404, 415, 422, 429, 503),
)
async def record_lead_event(
    request: Request[Any, Any, Any],
    ctx: Ctx,
    lead_id: FromPath[uuid.UUID],
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", max_length=255)] = None,
) -> Response[EventReceipt]:
    return await _record(request, ctx, lead_id, idempotency_key)


@post(
    "/v1/events",
    status_code=201,
    summary="Record a custom event by email address",
    description=_DESCRIPTION + " The event goes to the newest lead of the address.",
    guards=[requires_scope("events:write")],
    responses=problem_responses(400, 401, 403, 404, 415, 422, 429, 503),
)
async def record_event_by_email(
    request: Request[Any, Any, Any],
    ctx: Ctx,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", max_length=255)] = None,
) -> Response[EventReceipt]:
    return await _record(request, ctx, None, idempotency_key)


EVENT_ROUTES = [record_lead_event, record_event_by_email]
