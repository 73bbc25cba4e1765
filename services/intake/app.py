"""The intake HTTP API (Litestar): thin handlers that parse, call one function, map the result."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proto.http import LeadReceipt, LeadSubmission
from services.common import metrics
from services.common.config import IntakeSettings
from services.common.db import transaction
from services.common.runtime import Runtime, service_runtime
from services.intake.leads import accept_lead
from services.intake.problems import EXCEPTION_HANDLERS, ProblemError
from services.intake.sns import Fetcher, SnsVerifier, fetch_https
from services.intake.tracking import TRACKING_ROUTES
from services.intake.validation import parse_lead
from services.intake.webhooks import email_events_webhook

log = logging.getLogger(__name__)


def _runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


@post(
    "/v1/leads",
    status_code=202,
    summary="Submit a lead",
    description=(
        "Validates, sanitizes and stores a lead, then enrolls it into the matching Sequences. "
        "202 for a new lead; 200 with duplicate=true when the same address was accepted within the "
        "duplicate window (no second enrollment). Errors are RFC 9457 problem+json."
    ),
    request_body_media_type="application/json",
)
async def submit_lead(request: Request[Any, Any, State], state: State) -> Response[LeadReceipt]:
    if request.content_type[0] != "application/json":
        raise ProblemError(415, "Send the lead as a JSON object with Content-Type: application/json.")
    try:
        raw = msgspec.json.decode(await request.body())
    except msgspec.DecodeError as error:
        raise ProblemError(400, f"The body is not valid JSON: {error}") from error
    lead, email_key = parse_lead(raw)
    settings: IntakeSettings = state.settings
    async with transaction(_runtime(state).pool) as conn:
        receipt = await accept_lead(
            conn,
            lead,
            email_key,
            duplicate_window=timedelta(hours=settings.duplicate_window_hours),
            topic=settings.topic_leads_accepted,
        )
    metrics.LEADS.labels("duplicate" if receipt.duplicate else "accepted").inc()
    return Response(receipt, status_code=200 if receipt.duplicate else 202)


@get("/readyz", summary="Readiness: PostgreSQL answers and the outbox relay runs")
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


def create_app(settings: IntakeSettings, *, sns_fetch: Fetcher = fetch_https) -> Litestar:
    """The intake application. Its lifespan opens the pool and, when enabled, runs the outbox relay.
    ``sns_fetch`` fetches SNS signing certificates (injected by tests, which cannot reach AWS)."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # uvicorn owns the signals of the intake process; it ends the lifespan on SIGTERM.
        async with service_runtime(settings, handle_signals=False) as runtime:
            app.state.runtime, app.state.settings = runtime, settings
            app.state.sns_verifier = SnsVerifier(
                [a.strip() for a in settings.sns_topic_arns.split(",") if a.strip()], sns_fetch
            )
            yield

    return Litestar(
        route_handlers=[submit_lead, healthz, readyz, prometheus_metrics, *TRACKING_ROUTES, email_events_webhook],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="healingwork intake", version="1.0.0"),
        signature_types=[LeadSubmission],
    )
