"""The HTTP edge of authentication: read the credentials, call the decision, remember the caller.

Usage on a route: ``@post("/v1/leads", guards=[requires_scope("leads:write")])``; the handler then
reads the caller with :func:`principal_of`. What the credentials are and how they are checked is
:mod:`services.intake.authentication` (no framework there); this module only adapts Litestar's
connection to it, and the rate limiter's view of who is calling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from services.intake.authentication import (
    Credentials,
    Network,
    Principal,
    authenticate,
    authorize,
    presented_api_key,
    resolve_client_ip,
)
from services.intake.clients import SCOPES
from services.intake.context import context_of

# A route opts out of rate limiting with ``opt={NO_RATE_LIMIT: True}``: tracking pixels and links
# (many people behind one NAT load them at once) and signed provider webhooks.
NO_RATE_LIMIT = "no_rate_limit"

PRINCIPAL_KEY = "healingwork.principal"
PUBLIC_FORM_PATH = "/v1/leads"

Connection = ASGIConnection[Any, Any, Any, Any]
Guard = Callable[[Connection, BaseRouteHandler], Awaitable[None]]


def _api_key(connection: Connection) -> str | None:
    return presented_api_key(connection.headers.get("authorization"), connection.headers.get("x-api-key"))


def client_ip(connection: Connection, trusted: list[Network]) -> str:
    """The caller's IP (see :func:`services.intake.authentication.resolve_client_ip`)."""
    peer = connection.client.host if connection.client else "unknown"
    return resolve_client_ip(peer, connection.headers.getall("x-forwarded-for", []), trusted)


def rate_limit_identity(trusted: list[Network]) -> Callable[[Connection], str]:
    """What a rate limit counts by: the presented API key's hash prefix or client id, else the client IP."""

    def identify(connection: Connection) -> str:
        if (key := _api_key(connection)) is not None:
            return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
        if client_id := connection.headers.get("x-client-id"):
            return "client:" + client_id[:64]
        return "ip:" + client_ip(connection, trusted)

    return identify


def is_public_form_submission(connection: Connection) -> bool:
    """``POST /v1/leads`` without credentials: it can only succeed as a public form submission."""
    return (
        connection.scope.get("method") == "POST"
        and connection.scope.get("path") == PUBLIC_FORM_PATH
        and _api_key(connection) is None
        and "x-signature" not in connection.headers
    )


def requires_scope(scope: str) -> Guard:
    """A Litestar guard: the caller must authenticate and hold ``scope`` (``admin`` holds every scope)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def guard(connection: Connection, _: BaseRouteHandler) -> None:
        request: Request[Any, Any, Any] = Request(connection.scope, connection.receive)
        context = context_of(connection.app.state)
        credentials = Credentials(
            api_key=_api_key(connection),
            signature=connection.headers.get("x-signature"),
            client_id=connection.headers.get("x-client-id"),
            origin=connection.headers.get("origin"),
            body=request.body,
        )
        principal = await authenticate(context.pool, credentials, context.settings, now=context.clock())
        authorize(principal, scope)
        connection.scope[PRINCIPAL_KEY] = principal  # type: ignore[literal-required]

    return guard


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """The caller, as established by :func:`requires_scope` for this request."""
    principal: Principal = request.scope[PRINCIPAL_KEY]  # type: ignore[literal-required]
    return principal
