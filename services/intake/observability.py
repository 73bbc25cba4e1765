"""Request ids, access logs and HTTP metrics: one ASGI middleware around every intake route.

A request id comes from the caller's ``X-Request-Id`` when it is sane (at most 128 characters of
letters, digits, ``.``, ``_``, ``-``, ``:``), else is generated; it is returned in ``X-Request-Id``,
written on every log line of the request, stored on the lead and carried in ``lead.accepted``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Histogram

from services.common.logs import REQUEST_ID

log = logging.getLogger("services.intake.access")

REQUEST_ID_KEY = "healingwork.request_id"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
QUIET_ROUTES = frozenset({"/healthz", "/readyz"})

HTTP_REQUESTS = Counter(
    "healingwork_http_requests_total", "HTTP requests served by intake", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "healingwork_http_request_duration_seconds",
    "Time to serve an HTTP request, by route",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def request_id_of(scope: Any) -> str | None:
    """The id of the request being served (set by the middleware)."""
    value = scope.get(REQUEST_ID_KEY)
    return str(value) if value is not None else None


def request_context_middleware(app: ASGIApp) -> ASGIApp:
    """Wrap ``app``: assign the request id, count and time the request, write one access log line."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if REQUEST_ID_PATTERN.fullmatch(incoming) else uuid.uuid4().hex
        scope[REQUEST_ID_KEY] = request_id  # type: ignore[literal-required]
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = str(scope.get("path_template") or "unmatched")
            method = str(scope.get("method", ""))
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_SECONDS.labels(method, route).observe(elapsed)
            # The query string is never logged: DELETE /v1/leads?email=... carries personal data.
            log.log(
                logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
                "request",
                extra={"method": method, "route": route, "status": status, "duration_ms": round(elapsed * 1000, 2)},
            )
            REQUEST_ID.reset(token)

    return middleware
