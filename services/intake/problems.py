"""Errors as RFC 9457 problem details: the one mapping from failures to HTTP responses.

No response ever carries a stack trace; a dependency outage is a 503 with Retry-After, never a 500.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.openapi import ResponseSpec

from proto.http import FieldError, Problem
from services.common.db import UNAVAILABLE_ERRORS
from services.intake.validation import InvalidLead

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
) -> Response[bytes]:
    body = Problem(title=_TITLES.get(status, "Error"), status=status, detail=detail, errors=errors or [])
    return Response(
        content=msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers or {}
    )


def _on_problem(_: Request[Any, Any, Any], exc: ProblemError) -> Response[bytes]:
    return problem_response(exc.status, exc.detail, headers=exc.headers)


def _on_invalid_lead(_: Request[Any, Any, Any], exc: InvalidLead) -> Response[bytes]:
    return problem_response(422, "One or more fields are invalid; see errors.", errors=exc.errors)


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
    InvalidLead: _on_invalid_lead,
    HTTPException: _on_http_exception,
    **{kind: _on_unavailable for kind in UNAVAILABLE_ERRORS},
    Exception: _on_unexpected,
}
