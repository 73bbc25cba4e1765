"""Errors as RFC 9457 problem details: the one mapping from failures to HTTP responses.

The intake's domain functions raise domain errors (one type per failure a caller can cause) and know
nothing of HTTP; :data:`DOMAIN_PROBLEMS` is the table that turns each into its status, title, detail
and headers. A handler raises :class:`ProblemError` only for what is about HTTP itself (a wrong
Content-Type). No response ever carries a stack trace; a dependency outage is a 503 with Retry-After,
never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.openapi import ResponseSpec

from proto.http import FieldError, Problem
from services.common.db import UNAVAILABLE_ERRORS
from services.common.errors import CallerError
from services.common.signatures import SignatureRejected
from services.common.tokens import InvalidToken
from services.intake.authentication import AuthenticationFailed, MissingCredentials, MissingScope, UnknownApiKey
from services.intake.bodies import MalformedBody
from services.intake.generic_webhook import InvalidWebhookBody, MalformedWebhookTimestamp, UnsignedWebhook
from services.intake.idempotency import IdempotencyKeyReused
from services.intake.provider_events import AdapterNotConfigured
from services.intake.rate_limit import RateLimited
from services.intake.sns import SnsRejected, SnsUnavailable
from services.intake.stats_query import InvalidQuery
from services.intake.validation import InvalidLead
from services.intake.webhook_endpoints import InvalidWebhookEndpoint, NoSuchWebhookDelivery, NoSuchWebhookEndpoint

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5

_TITLES = {
    400: "Malformed request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid lead",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


class ProblemError(Exception):
    """Raised by handlers to answer with a problem document."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI declarations of the problem documents a route may answer with."""
    return {
        status: ResponseSpec(Problem, description="RFC 9457 problem details", media_type=PROBLEM_JSON)
        for status in statuses
    }


def problem_response(
    status: int,
    detail: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    *,
    title: str | None = None,
) -> Response[bytes]:
    """A problem document; ``title`` defaults to the status's usual title."""
    body = Problem(title=title or _TITLES.get(status, "Error"), status=status, detail=detail, errors=errors or [])
    return Response(
        content=msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers or {}
    )


@dataclass(frozen=True)
class Mapped:
    """How a domain error is answered. ``detail`` defaults to the error's message (written for the
    caller); ``errors`` defaults to the error's ``errors`` attribute (the invalid fields), if any."""

    status: int
    title: str | None = None
    detail: str | Callable[[Exception], str] | None = None
    headers: Mapping[str, str] | Callable[[Exception], Mapping[str, str]] = field(default_factory=dict)
    errors: list[FieldError] | None = None


CHALLENGE = {"WWW-Authenticate": 'Bearer realm="healingwork"'}

# The one table from domain errors to problem documents. A subclass not listed is answered as its
# closest listed base class.
DOMAIN_PROBLEMS: dict[type[Exception], Mapped] = {
    # Who is calling (services.intake.authentication, services.common.signatures).
    MissingCredentials: Mapped(401, headers=CHALLENGE),
    UnknownApiKey: Mapped(401, headers=CHALLENGE),
    AuthenticationFailed: Mapped(401),
    SignatureRejected: Mapped(401),
    MissingScope: Mapped(403),
    RateLimited: Mapped(
        429, headers=lambda error: {"Retry-After": error.retry_after_header if isinstance(error, RateLimited) else "1"}
    ),
    # Signed links (services.common.tokens): nothing a forger could learn from.
    InvalidToken: Mapped(404, detail="This link is not valid."),
    # Bodies and fields.
    MalformedBody: Mapped(400),
    InvalidLead: Mapped(422, detail="One or more fields are invalid; see errors."),
    IdempotencyKeyReused: Mapped(
        422,
        detail="One or more fields are invalid; see errors.",
        errors=[FieldError(field="Idempotency-Key", reason="already used with a different request body")],
    ),
    InvalidQuery: Mapped(422, title="Invalid query", detail="One or more query parameters are invalid; see errors."),
    # Provider webhooks (services.intake.generic_webhook, services.intake.sns).
    AdapterNotConfigured: Mapped(404),
    UnsignedWebhook: Mapped(401),
    MalformedWebhookTimestamp: Mapped(401),
    InvalidWebhookBody: Mapped(422, title="Invalid webhook body", detail="The events are not valid; see errors."),
    # One answer for every refusal (the reason is logged): no probing which topics are accepted.
    SnsRejected: Mapped(401, detail="The SNS message is not trusted."),
    SnsUnavailable: Mapped(503, detail="Amazon SNS is unreachable; retry later.", headers={"Retry-After": "30"}),
    # Outgoing webhook endpoints (services.intake.webhook_endpoints).
    InvalidWebhookEndpoint: Mapped(422, title="Invalid webhook endpoint"),
    NoSuchWebhookEndpoint: Mapped(404),
    NoSuchWebhookDelivery: Mapped(404),
    # A caller's failure without a row of its own is still the caller's: 400, never a 500.
    CallerError: Mapped(400),
}


def problem_for(error: Exception) -> Response[bytes]:
    """The problem document answering the domain error ``error`` (see :data:`DOMAIN_PROBLEMS`)."""
    mapped = next(DOMAIN_PROBLEMS[kind] for kind in type(error).__mro__ if kind in DOMAIN_PROBLEMS)
    detail = mapped.detail(error) if callable(mapped.detail) else mapped.detail or str(error)
    errors = mapped.errors if mapped.errors is not None else getattr(error, "errors", None)
    headers = mapped.headers(error) if callable(mapped.headers) else mapped.headers
    return problem_response(mapped.status, detail, errors, dict(headers), title=mapped.title)


def _on_domain_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    return problem_for(exc)


def _on_problem(_: Request[Any, Any, Any], exc: ProblemError) -> Response[bytes]:
    return problem_response(exc.status, exc.detail, headers=exc.headers)


def _on_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    detail = exc.detail if exc.status_code < 500 else None
    headers = dict(exc.headers or {})
    if exc.status_code == 429:
        # Litestar's rate limiter says when the window resets; clients and proxies read Retry-After.
        headers["Retry-After"] = str(max(1, int(headers.get("RateLimit-Reset", "0") or 0)))
    return problem_response(exc.status_code, detail, headers=headers)


def _on_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.warning("database unavailable", extra={"path": request.url.path, "error": repr(exc)})
    return problem_response(
        503, "A dependency is unavailable; retry later.", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem_response(500, "An unexpected error occurred; it has been logged.")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ProblemError: _on_problem,
    **{kind: _on_domain_error for kind in DOMAIN_PROBLEMS},
    HTTPException: _on_http_exception,
    **{kind: _on_unavailable for kind in UNAVAILABLE_ERRORS},
    Exception: _on_unexpected,
}
