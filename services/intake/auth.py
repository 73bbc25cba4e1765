"""The HTTP edge of authentication: read the credentials, call the decision, remember the caller.

Usage on a route: ``@post("/v1/leads", guards=[requires_scope("leads:write")])``; the handler then
reads the caller with :func:`principal_of`. What the credentials are and how they are checked is
:mod:`services.intake.authentication` (no framework there); this module only adapts Litestar's
connection to it, and charges each request to its caller's budget (:mod:`services.intake.rate_limit`)
once the caller is known: an authenticated client by its client id, a public form or a caller that
failed to authenticate by its proxy-resolved IP. No header a caller writes itself picks the bucket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from services.common.errors import CallerError
from services.intake.authentication import (
    Credentials,
    MissingScope,
    Network,
    Principal,
    authenticate,
    authorize,
    presented_api_key,
    resolve_client_ip,
    trusted_networks,
)
from services.intake.clients import SCOPES
from services.intake.context import context_of
from services.intake.rate_limit import KeyedRateLimiter, RequestLimits, client_key, ip_key

PRINCIPAL_KEY = "healingwork.principal"

Connection = ASGIConnection[Any, Any, Any, Any]
Guard = Callable[[Connection, BaseRouteHandler], Awaitable[None]]


def _api_key(connection: Connection) -> str | None:
    return presented_api_key(connection.headers.get("authorization"), connection.headers.get("x-api-key"))


def client_ip(connection: Connection, trusted: list[Network]) -> str:
    """The caller's IP (see :func:`services.intake.authentication.resolve_client_ip`)."""
    peer = connection.client.host if connection.client else "unknown"
    return resolve_client_ip(peer, connection.headers.getall("x-forwarded-for", []), trusted)


def budget_of(limits: RequestLimits, principal: Principal, ip: str) -> tuple[KeyedRateLimiter, str]:
    """Which limiter and bucket an authenticated request is charged to: an API client's own bucket (by
    client id, however it authenticated); a public form's by IP with the stricter form limit; an
    anonymous caller's (``AUTH_MODE=disabled``) by IP."""
    if principal.client_id is not None:
        return limits.requests, client_key(principal.client_id)
    if principal.kind == "public_form":
        return limits.forms, ip_key(ip)
    return limits.requests, ip_key(ip)


def rate_limited_by_ip(select: Callable[[RequestLimits], KeyedRateLimiter]) -> Guard:
    """A guard for unauthenticated routes: charge the caller's IP (resolved through ``TRUSTED_PROXIES``)
    in the limiter ``select`` picks, e.g. ``rate_limited_by_ip(lambda limits: limits.forms)``."""

    async def guard(connection: Connection, _: BaseRouteHandler) -> None:
        context = context_of(connection.app.state)
        select(context.limits).check(ip_key(client_ip(connection, trusted_networks(context.settings))))

    return guard


def requires_scope(scope: str) -> Guard:
    """A Litestar guard: the caller must authenticate and hold ``scope`` (``admin`` holds every scope)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def guard(connection: Connection, _: BaseRouteHandler) -> None:
        request: Request[Any, Any, Any] = Request(connection.scope, connection.receive)
        context = context_of(connection.app.state)
        ip = client_ip(connection, trusted_networks(context.settings))
        credentials = Credentials(
            api_key=_api_key(connection),
            signature=connection.headers.get("x-signature"),
            client_id=connection.headers.get("x-client-id"),
            origin=connection.headers.get("origin"),
            body=request.body,
            method=str(connection.scope.get("method", "GET")),
            path=connection.scope["path"],
            query=connection.scope.get("query_string", b"").decode("latin-1"),
        )
        try:
            principal = await authenticate(context.pool, credentials, context.settings, now=context.clock())
        except CallerError:  # AuthenticationFailed, SignatureRejected: the credentials are bad
            # Counted by IP, never by the client a failed request names: naming a client costs it nothing.
            context.limits.requests.check(ip_key(ip))
            raise
        limiter, key = budget_of(context.limits, principal, ip)
        try:
            authorize(principal, scope)
        except MissingScope:
            context.limits.requests.check(key)
            raise
        limiter.check(key)
        connection.scope[PRINCIPAL_KEY] = principal  # type: ignore[literal-required]

    return guard


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """The caller, as established by :func:`requires_scope` for this request."""
    principal: Principal = request.scope[PRINCIPAL_KEY]  # type: ignore[literal-required]
    return principal
