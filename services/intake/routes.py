"""The intake's own HTTP routes: leads (submit, read, timeline, export, erase) and health (``/metrics`` is on
its own port).

Thin handlers: parse, call one function, map the result. They get what they work with as an
:class:`~services.intake.context.IntakeContext` (``ctx``, injected); failures are domain errors that
``services.intake.problems`` maps to problem documents. ``services.intake.app`` assembles these with
the tracking, stats and webhook routes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from litestar.params import FromPath, HeaderParameter, QueryParameter

from proto.http import (
    AddressExport,
    FieldError,
    FormReceipt,
    LeadReceipt,
    LeadSubmission,
    LeadTimeline,
    LeadView,
)
from services.common import metrics
from services.common.db import transaction
from services.intake.auth import client_ip, principal_of, requires_scope
from services.intake.authentication import trusted_networks
from services.intake.bodies import decode_json
from services.intake.erasure import erase_address, erase_lead
from services.intake.export import export_address
from services.intake.injection import Ctx
from services.intake.lookup import fetch_lead
from services.intake.observability import request_id_of
from services.intake.problems import ProblemError, problem_responses
from services.intake.submission import HONEYPOT, prepare_submission
from services.intake.timeline import InvalidCursor, lead_exists, timeline_page
from services.intake.validation import InvalidLead, normalize_email

log = logging.getLogger(__name__)


def inlined_schema(kind: type) -> dict[str, Any]:
    """The JSON Schema of a msgspec type with every ``$ref`` replaced by its definition (no recursion)."""
    schema = msgspec.json.schema(kind)
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


def json_body_operation(kind: type) -> type[Operation]:
    """An OpenAPI operation documenting a required JSON body of ``kind``: for a route that reads and
    decodes its body itself (to name every bad field in one problem), so Litestar cannot infer it."""
    schema = inlined_schema(kind)

    @dataclass
    class JsonBodyOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                # A plain JSON Schema dict: Litestar serializes it as given.
                content={"application/json": OpenAPIMediaType(schema=schema)},  # type: ignore[arg-type]
                required=True,
            )

    return JsonBodyOperation


@post(
    "/v1/leads",
    status_code=202,
    summary="Submit a lead",
    description=(
        "Validates, sanitizes and stores a lead, then enrolls it into the matching Sequences. "
        "202 for a new lead; 200 with duplicate=true when the same address was accepted within the "
        "duplicate window (no second enrollment). An Idempotency-Key header makes retries safe: the same "
        "key and body get the first answer, the same key with another body gets 422. Needs the "
        "leads:write scope (API key, signed request, or a public form from an allowed origin). "
        'A public form (no credentials) always gets 202 {"status": "received"}: no id, no duplicate '
        "flag, so an unauthenticated caller learns nothing about existing leads. With double opt-in "
        "(DOUBLE_OPT_IN) the lead enrolls only after confirming the emailed link. "
        "Errors are RFC 9457 problem+json."
    ),
    guards=[requires_scope("leads:write")],
    operation_class=json_body_operation(LeadSubmission),
    responses={
        200: ResponseSpec(LeadReceipt, description="A duplicate within the window: the existing lead's id"),
        202: ResponseSpec(
            LeadReceipt | FormReceipt,
            description="Accepted: the new lead's id (API clients), or just received (public forms)",
        ),
        **problem_responses(400, 401, 403, 413, 415, 422, 429, 503),
    },
)
async def submit_lead_handler(
    request: Request[Any, Any, Any],
    ctx: Ctx,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", max_length=255)] = None,
) -> Response[LeadReceipt | FormReceipt]:
    if request.content_type[0] != "application/json":
        raise ProblemError(415, "Send the lead as a JSON object with Content-Type: application/json.")
    body = await request.body()
    ip = client_ip(request, trusted_networks(ctx.settings))
    job = prepare_submission(
        decode_json(body),
        body,
        principal_of(request),
        client_ip=ip,
        user_agent=request.headers.get("user-agent"),
        request_id=request_id_of(request.scope),
        idempotency_key=idempotency_key,
        honeypot_field=ctx.settings.form_honeypot_field,
        double_opt_in=ctx.settings.double_opt_in,
    )
    if job == HONEYPOT:
        # A bot filled the hidden field (public forms only): answer as if accepted, store nothing.
        metrics.LEADS.labels("honeypot").inc()
        log.info("honeypot field filled; lead dropped", extra={"client_ip": ip})
        return Response(FormReceipt(status="received"), status_code=202)
    receipt = await ctx.committer.submit(job, order=job.email_key)
    metrics.LEADS.labels("duplicate" if receipt.duplicate else "accepted").inc()
    if principal_of(request).kind == "public_form":
        # The same answer for a new lead and a duplicate: no id, no flag (issue 15, item 6).
        return Response(FormReceipt(status="received"), status_code=202)
    return Response(receipt, status_code=200 if receipt.duplicate else 202)


@get(
    "/v1/leads/{lead_id:uuid}",
    summary="Read a lead",
    description="The stored lead with its consent record, enrollments and messages. Needs leads:read.",
    guards=[requires_scope("leads:read")],
    responses=problem_responses(400, 401, 403, 404, 429, 503),
)
async def read_lead(lead_id: FromPath[uuid.UUID], ctx: Ctx) -> LeadView:
    async with ctx.pool.connection() as conn:
        lead = await fetch_lead(conn, lead_id)
    if lead is None:
        raise ProblemError(404, "No such lead (it may have been erased).")
    return lead


@get(
    "/v1/leads/{lead_id:uuid}/timeline",
    summary="A lead's timeline",
    description=(
        "Everything that happened to the lead, oldest first: accepted (duplicates folded in), consent, "
        "enrollments and exits, each step sent/skipped/failed, opens and clicks (automated ones marked), "
        "bounces, complaints, unsubscribes, suppressions, and any other recorded event (as event.<type>). "
        "Paginated: pass next_cursor back as cursor. 404 for an unknown or erased lead. Needs leads:read."
    ),
    guards=[requires_scope("leads:read")],
    responses=problem_responses(400, 401, 403, 404, 422, 429, 503),
)
async def read_lead_timeline(
    lead_id: FromPath[uuid.UUID],
    ctx: Ctx,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> LeadTimeline:
    async with ctx.pool.connection() as conn:
        if not await lead_exists(conn, lead_id):
            raise ProblemError(404, "No such lead (it may have been erased).")
        try:
            entries, next_cursor = await timeline_page(conn, lead_id, limit=limit, cursor=cursor)
        except InvalidCursor as error:
            raise InvalidLead([FieldError(field="cursor", reason=str(error))]) from None
    return LeadTimeline(lead_id=lead_id, entries=entries, next_cursor=next_cursor)


@get(
    "/v1/leads/export",
    summary="Export an address's data (GDPR)",
    description=(
        "All data held for an address across all its leads (GDPR Art. 15/20) as one JSON document: each "
        "lead's record and whole timeline, and the address's suppression. After an erasure: no leads, and "
        "the 'erased' suppression. Needs admin."
    ),
    guards=[requires_scope("admin")],
    responses=problem_responses(400, 401, 403, 422, 429, 503),
)
async def export_lead_data(
    ctx: Ctx, email: Annotated[str, QueryParameter(name="email", max_length=320)]
) -> AddressExport:
    try:
        _, email_key = normalize_email(email)
    except ValueError as error:
        raise InvalidLead([FieldError(field="email", reason=str(error))]) from None
    async with ctx.pool.connection() as conn:
        return await export_address(conn, email_key, hash_key=ctx.settings.suppression_hash_key)


@delete(
    "/v1/leads/{lead_id:uuid}",
    summary="Erase a lead (GDPR)",
    description=(
        "Erases every lead of this lead's address, cancels its enrollments and keeps only a hashed "
        "suppression so the address is never mailed again. Idempotent: 204 also for an unknown id. "
        "Needs admin."
    ),
    guards=[requires_scope("admin")],
    # 404 only for a path that is not a lead id at all; an unknown id is 204.
    responses=problem_responses(400, 401, 403, 404, 429, 503),
)
async def erase_lead_by_id(lead_id: FromPath[uuid.UUID], ctx: Ctx) -> None:
    async with transaction(ctx.pool) as conn:
        erased = await erase_lead(
            conn,
            lead_id,
            hash_key=ctx.settings.suppression_hash_key,
            announce_topic=ctx.settings.topic_lifecycle_events,
        )
    metrics.LEADS_ERASED.inc(erased)


@delete(
    "/v1/leads",
    summary="Erase an address (GDPR)",
    description=(
        "The same as DELETE /v1/leads/{id}, by email address: erases every lead of the address and "
        "suppresses it, even if no lead exists. Idempotent. Needs admin."
    ),
    guards=[requires_scope("admin")],
    responses=problem_responses(400, 401, 403, 422, 429, 503),
)
async def erase_lead_by_email(ctx: Ctx, email: Annotated[str, QueryParameter(name="email", max_length=320)]) -> None:
    try:
        _, email_key = normalize_email(email)
    except ValueError as error:
        raise InvalidLead([FieldError(field="email", reason=str(error))]) from None
    async with transaction(ctx.pool) as conn:
        erased = await erase_address(
            conn,
            email_key,
            hash_key=ctx.settings.suppression_hash_key,
            announce_topic=ctx.settings.topic_lifecycle_events,
        )
    metrics.LEADS_ERASED.inc(erased)


@get(
    "/readyz",
    summary="Readiness: PostgreSQL answers and the outbox relay runs",
    responses=problem_responses(503),
)
async def readyz(ctx: Ctx) -> Response[dict[str, str]]:
    async with ctx.pool.connection() as conn:
        await conn.execute("SELECT 1")
    if ctx.relay_failed():
        raise ProblemError(503, "The outbox relay stopped.", {"Retry-After": "5"})
    return Response({"status": "ok"})


@get("/healthz", summary="Liveness: the process serves requests")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


LEAD_ROUTES = [
    submit_lead_handler,
    read_lead,
    read_lead_timeline,
    export_lead_data,
    erase_lead_by_id,
    erase_lead_by_email,
    healthz,
    readyz,
]
