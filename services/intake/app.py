"""The intake HTTP application (Litestar): its factory, lifespan and CORS.

The routes live in :mod:`services.intake.routes` (leads, health), :mod:`services.intake.tracking`,
:mod:`services.intake.stats` and :mod:`services.intake.webhooks`; they receive an
:class:`~services.intake.context.IntakeContext` (``ctx``), which the lifespan builds here from the
service runtime, so no route knows how the process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig

from services.common.config import IntakeSettings
from services.common.health import HealthServer
from services.common.runtime import Runtime, service_runtime
from services.intake.authentication import form_origins
from services.intake.confirmation import CONFIRMATION_ROUTES, confirmation_rules
from services.intake.context import STATE_KEY, IntakeContext
from services.intake.event_routes import EVENT_ROUTES
from services.intake.hash_upgrade import keep_hashes_keyed
from services.intake.injection import CONTEXT_DEPENDENCIES
from services.intake.leads import lead_committer
from services.intake.observability import request_context_middleware
from services.intake.problems import EXCEPTION_HANDLERS
from services.intake.rate_limit import KeyedRateLimiter, RequestLimits
from services.intake.routes import LEAD_ROUTES
from services.intake.sns import Fetcher, SnsVerifier, fetch_https
from services.intake.stats import get_stats
from services.intake.tracking import TRACKING_ROUTES
from services.intake.webhook_endpoint_routes import WEBHOOK_ENDPOINT_ROUTES
from services.intake.webhooks import email_events_webhook


@asynccontextmanager
async def metrics_port(
    settings: IntakeSettings, runtime: Runtime, sock: socket.socket | None = None
) -> AsyncIterator[None]:
    """``/metrics`` (with ``/healthz``, ``/readyz``) on ``HEALTH_PORT``, apart from the API's port, for the
    block; ``HEALTH_PORT=0`` turns it off. ``sock`` is the port bound already (by the CLI, so a taken
    port is one line at start-up)."""
    if not settings.health_port and sock is None:
        yield
        return
    health = await HealthServer.bind(settings.health_port, settings.host, sock=sock)
    health.is_ready = lambda: not runtime.relay_failed
    stop = asyncio.Event()
    task = asyncio.create_task(health.serve(stop))
    try:
        yield
    finally:
        stop.set()
        await task


def create_app(
    settings: IntakeSettings, *, sns_fetch: Fetcher = fetch_https, metrics_socket: socket.socket | None = None
) -> Litestar:
    """The intake application. Its lifespan opens the pool, serves the metrics port and, when enabled,
    runs the outbox relay. ``sns_fetch`` fetches SNS signing certificates (injected by tests, which
    cannot reach AWS); ``metrics_socket`` is ``HEALTH_PORT`` bound already."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # uvicorn owns the signals of the intake process; it ends the lifespan on SIGTERM.
        async with (
            service_runtime(settings, handle_signals=False) as runtime,
            metrics_port(settings, runtime, metrics_socket),
        ):
            context = IntakeContext(
                settings=settings,
                pool=runtime.pool,
                committer=lead_committer(
                    runtime.pool,
                    duplicate_window=timedelta(hours=settings.duplicate_window_hours),
                    topic=settings.topic_leads_accepted,
                    idempotency_ttl=timedelta(hours=settings.idempotency_ttl_hours),
                    max_batch_size=settings.lead_batch_max_size,
                    max_concurrent_batches=settings.lead_batch_concurrency,
                    confirmation=confirmation_rules(settings),
                    hash_key=settings.suppression_hash_key,
                ),
                sns_verifier=SnsVerifier(
                    [a.strip() for a in settings.sns_topic_arns.split(",") if a.strip()],
                    sns_fetch,
                    max_age_s=settings.sns_max_age_s,
                ),
                relay_failed=lambda: runtime.relay_failed,
                limits=RequestLimits.of(settings.rate_limit_per_minute, settings.form_rate_limit_per_minute),
                webhook_limiter=KeyedRateLimiter(settings.webhook_rate_limit_per_minute),
                tracking_limiter=KeyedRateLimiter(settings.tracking_rate_limit_per_minute),
            )
            setattr(app.state, STATE_KEY, context)
            rehash = asyncio.create_task(keep_hashes_keyed(runtime.pool, settings.suppression_hash_key))
            try:
                yield
            finally:
                rehash.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rehash

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
            *LEAD_ROUTES,
            *EVENT_ROUTES,
            get_stats,
            *TRACKING_ROUTES,
            email_events_webhook,
            *CONFIRMATION_ROUTES,
            *WEBHOOK_ENDPOINT_ROUTES,
        ],
        dependencies=CONTEXT_DEPENDENCIES,
        lifespan=[lifespan],
        # Rate limits are charged by requires_scope once the caller is authenticated (services.intake.auth).
        middleware=[request_context_middleware],
        cors_config=cors,
        exception_handlers=EXCEPTION_HANDLERS,
        # The process's logging is services.common.logs (JSON lines); Litestar's default config would
        # replace it with its own plain-text root handler at INFO.
        logging_config=None,
        request_max_body_size=settings.max_body_bytes,
        # OPENAPI_ENABLED=false (the chart's default) serves no /schema routes at all.
        openapi_config=OpenAPIConfig(title="healingwork intake", version="1.0.0") if settings.openapi_enabled else None,
    )
