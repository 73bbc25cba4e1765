"""The intake HTTP API (Litestar): thin handlers that parse, call one function, map the result."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, delete, get, post
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from litestar.params import FromPath, HeaderParameter, QueryParameter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proto.http import FieldError, LeadReceipt, LeadSubmission, LeadView
from services.common import metrics
from services.common.config import IntakeSettings
from services.common.db import transaction
from services.common.runtime import Runtime, service_runtime
from services.intake.auth import (
    NO_RATE_LIMIT,
    client_ip,
    form_origins,
    is_public_form_submission,
    principal_of,
    rate_limit_identity,
    requires_scope,
    trusted_networks,
)
from services.intake.batching import GroupCommitter
from services.intake.erasure import erase_address, erase_lead
from services.intake.idempotency import IdempotencyKey, IdempotencyKeyReused, valid_idempotency_key
from services.intake.leads import LeadJob, Submitter, lead_committer
from services.intake.lookup import fetch_lead
from services.intake.observability import request_context_middleware, request_id_of
from services.intake.problems import EXCEPTION_HANDLERS, ProblemError, problem_responses
from services.intake.sns import Fetcher, SnsVerifier, fetch_https
from services.intake.stats import get_stats
from services.intake.tracking import TRACKING_ROUTES
from services.intake.validation import InvalidLead, clean_text, normalize_email, parse_lead
from services.intake.webhooks import email_events_webhook

log = logging.getLogger(__name__)

USER_AGENT_MAX = 512
HEALTH_PATHS = ["/healthz", "/readyz", "/metrics", "/schema"]


def _runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


def _inlined_schema(kind: type) -> dict[str, Any]:
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


_LEAD_SCHEMA = _inlined_schema(LeadSubmission)


@dataclass
class _LeadBodyOperation(Operation):
    """Documents the JSON body that ``submit_lead`` parses itself (to report every invalid field at once)."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            # A plain JSON Schema dict: Litestar serializes it as given.
            content={"application/json": OpenAPIMediaType(schema=_LEAD_SCHEMA)},  # type: ignore[arg-type]
            required=True,
        )


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
        "Errors are RFC 9457 problem+json."
    ),
    guards=[requires_scope("leads:write")],
    operation_class=_LeadBodyOperation,
    responses={
        200: ResponseSpec(LeadReceipt, description="A duplicate within the window: the existing lead's id"),
        **problem_responses(400, 401, 403, 413, 415, 422, 429, 503),
    },
)
async def submit_lead_handler(
    request: Request[Any, Any, State],
    state: State,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", max_length=255)] = None,
) -> Response[LeadReceipt]:
    settings: IntakeSettings = state.settings
    if request.content_type[0] != "application/json":
        raise ProblemError(415, "Send the lead as a JSON object with Content-Type: application/json.")
    body = await request.body()
    try:
        raw = msgspec.json.decode(body)
    # Invalid UTF-8 is not a DecodeError, and deep nesting exhausts the decoder's recursion limit.
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ProblemError(400, f"The body is not valid JSON: {error}") from error
    principal = principal_of(request)
    ip = client_ip(request, trusted_networks(settings))
    # Public forms carry a honeypot field people cannot see; it is removed before validation.
    if principal.kind == "public_form" and isinstance(raw, dict) and raw.pop(settings.form_honeypot_field, None):
        # A bot filled it: answer as if accepted, store nothing.
        metrics.LEADS.labels("honeypot").inc()
        log.info("honeypot field filled; lead dropped", extra={"client_ip": ip})
        return Response(LeadReceipt(id=uuid.uuid4(), duplicate=False), status_code=202)
    try:
        lead, email_key = parse_lead(raw)
    except InvalidLead:
        metrics.LEADS.labels("rejected").inc()
        raise
    idempotency: IdempotencyKey | None = None
    if idempotency_key is not None:
        if not valid_idempotency_key(idempotency_key):
            raise InvalidLead([FieldError(field="Idempotency-Key", reason="1 to 255 visible ASCII characters")])
        scope = str(principal.client_id) if principal.client_id else f"{principal.kind}:{ip}"
        idempotency = IdempotencyKey.of(scope, idempotency_key, body)
    submitter = Submitter(
        client_id=principal.client_id,
        ip=ip if ip != "unknown" else None,
        user_agent=clean_text(request.headers.get("user-agent") or "")[:USER_AGENT_MAX] or None,
        request_id=request_id_of(request.scope),
    )
    committer: GroupCommitter[LeadJob, LeadReceipt] = state.committer
    try:
        receipt = await committer.submit(LeadJob(lead, email_key, submitter, idempotency), order=email_key)
    except IdempotencyKeyReused:
        raise InvalidLead(
            [FieldError(field="Idempotency-Key", reason="already used with a different request body")]
        ) from None
    metrics.LEADS.labels("duplicate" if receipt.duplicate else "accepted").inc()
    return Response(receipt, status_code=200 if receipt.duplicate else 202)


@get(
    "/v1/leads/{lead_id:uuid}",
    summary="Read a lead",
    description="The stored lead with its consent record, enrollments and messages. Needs leads:read.",
    guards=[requires_scope("leads:read")],
    responses=problem_responses(400, 401, 403, 404, 429, 503),
)
async def read_lead(lead_id: FromPath[uuid.UUID], state: State) -> LeadView:
    async with _runtime(state).pool.connection() as conn:
        lead = await fetch_lead(conn, lead_id)
    if lead is None:
        raise ProblemError(404, "No such lead (it may have been erased).")
    return lead


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
async def erase_lead_by_id(lead_id: FromPath[uuid.UUID], state: State) -> None:
    async with transaction(_runtime(state).pool) as conn:
        erased = await erase_lead(conn, lead_id)
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
async def erase_lead_by_email(
    state: State, email: Annotated[str, QueryParameter(name="email", max_length=320)]
) -> None:
    try:
        _, email_key = normalize_email(email)
    except ValueError as error:
        raise InvalidLead([FieldError(field="email", reason=str(error))]) from None
    async with transaction(_runtime(state).pool) as conn:
        erased = await erase_address(conn, email_key)
    metrics.LEADS_ERASED.inc(erased)


@get(
    "/readyz",
    summary="Readiness: PostgreSQL answers and the outbox relay runs",
    responses=problem_responses(503),
)
async def readyz(state: State) -> Response[dict[str, str]]:
    runtime = _runtime(state)
    async with runtime.pool.connection() as conn:
        await conn.execute("SELECT 1")
    if runtime.relay_failed:
        raise ProblemError(503, "The outbox relay stopped.", {"Retry-After": "5"})
    return Response({"status": "ok"})


@get("/healthz", summary="Liveness: the process serves requests")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def prometheus_metrics() -> Response[bytes]:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def rate_limits(settings: IntakeSettings) -> list[RateLimitConfig]:
    """Per-process limits (see docs/configuration.md): every request per API key, signing client or
    else client IP; public form submissions (POST /v1/leads without credentials) per client IP with
    the stricter form limit instead."""
    forms_apply = settings.auth_mode == "required"
    return [
        RateLimitConfig(
            rate_limit=("minute", settings.rate_limit_per_minute),
            identifier_for_request=rate_limit_identity,
            check_throttle_handler=lambda request: not (forms_apply and is_public_form_submission(request)),
            exclude=HEALTH_PATHS,
            exclude_opt_key=NO_RATE_LIMIT,
            store="rate_limit",
        ),
        RateLimitConfig(
            rate_limit=("minute", settings.form_rate_limit_per_minute),
            identifier_for_request=rate_limit_identity,
            check_throttle_handler=lambda request: forms_apply and is_public_form_submission(request),
            exclude=HEALTH_PATHS,
            exclude_opt_key=NO_RATE_LIMIT,
            store="rate_limit_forms",
        ),
    ]


def create_app(settings: IntakeSettings, *, sns_fetch: Fetcher = fetch_https) -> Litestar:
    """The intake application. Its lifespan opens the pool and, when enabled, runs the outbox relay.
    ``sns_fetch`` fetches SNS signing certificates (injected by tests, which cannot reach AWS)."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # uvicorn owns the signals of the intake process; it ends the lifespan on SIGTERM.
        async with service_runtime(settings, handle_signals=False) as runtime:
            app.state.runtime = runtime
            app.state.committer = lead_committer(
                runtime.pool,
                duplicate_window=timedelta(hours=settings.duplicate_window_hours),
                topic=settings.topic_leads_accepted,
                idempotency_ttl=timedelta(hours=settings.idempotency_ttl_hours),
                max_batch_size=settings.lead_batch_max_size,
                max_concurrent_batches=settings.lead_batch_concurrency,
            )
            app.state.sns_verifier = SnsVerifier(
                [a.strip() for a in settings.sns_topic_arns.split(",") if a.strip()], sns_fetch
            )
            yield

    origins = form_origins(settings)
    cors = (
        CORSConfig(
            allow_origins=origins,
            allow_methods=["POST"],
            allow_headers=["Content-Type", "Idempotency-Key", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
            max_age=600,
        )
        if origins
        else None
    )
    return Litestar(
        route_handlers=[
            submit_lead_handler,
            read_lead,
            erase_lead_by_id,
            erase_lead_by_email,
            healthz,
            readyz,
            prometheus_metrics,
            get_stats,
            *TRACKING_ROUTES,
            email_events_webhook,
        ],
        lifespan=[lifespan],
        state=State({"settings": settings}),
        middleware=[request_context_middleware, *(limit.middleware for limit in rate_limits(settings))],
        cors_config=cors,
        exception_handlers=EXCEPTION_HANDLERS,
        # The process's logging is services.common.logs (JSON lines); Litestar's default config would
        # replace it with its own plain-text root handler at INFO.
        logging_config=None,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="healingwork intake", version="1.0.0"),
    )
