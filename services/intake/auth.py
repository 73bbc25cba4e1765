"""Who is calling: API keys, HMAC-signed requests, public browser forms; and the scope guard.

Usage on a route: ``@post("/v1/leads", guards=[requires_scope("leads:write")])``; the handler then
reads the caller with :func:`principal_of`. With ``AUTH_MODE=disabled`` (``healingwork dev`` only)
every request is an anonymous caller holding every scope.

Credentials, in order of precedence:

* ``Authorization: Bearer hw_…`` (or ``X-API-Key: hw_…``): an API key.
* ``X-Client-Id: <client id>`` + ``X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
  keyed with the client's signing secret; the timestamp must be within ``SIGNATURE_TOLERANCE_S`` and a
  signature is accepted once.
* none, with an ``Origin`` in ``PUBLIC_FORM_ORIGINS``: a public form, allowed ``leads:write`` only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from services.common.config import IntakeSettings
from services.common.db import transaction
from services.common.runtime import Runtime
from services.intake.clients import SCOPES, find_client_by_id, find_client_by_key, record_signature, signing_secret
from services.intake.problems import ProblemError

# A route opts out of rate limiting with ``opt={NO_RATE_LIMIT: True}``: tracking pixels and links
# (many people behind one NAT load them at once) and signed provider webhooks.
NO_RATE_LIMIT = "no_rate_limit"

PRINCIPAL_KEY = "healingwork.principal"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SIGNATURE_PATTERN = re.compile(r"t=([0-9]{1,12}),v1=([0-9a-f]{64})")

Kind = Literal["api_key", "signature", "public_form", "anonymous"]
Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    kind: Kind
    scopes: frozenset[str]
    client_id: uuid.UUID | None = None
    name: str = "anonymous"


def presented_api_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The API key a request carries (``Authorization: Bearer`` or ``X-API-Key``), unverified."""
    authorization = connection.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return connection.headers.get("x-api-key") or None


def client_ip(connection: ASGIConnection[Any, Any, Any, Any], trusted: list[Network]) -> str:
    """The caller's IP: the peer, unless it is a trusted proxy; then the right-most untrusted address of
    ``X-Forwarded-For`` (addresses a client wrote itself sit to the left and are never believed)."""
    peer = connection.client.host if connection.client else "unknown"

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    if not is_trusted(peer):
        return peer
    forwarded = [part.strip() for part in ",".join(connection.headers.getall("x-forwarded-for", [])).split(",")]
    for address in reversed([part for part in forwarded if part]):
        if not is_trusted(address):
            try:
                return str(ipaddress.ip_address(address))
            except ValueError:
                return peer
    return peer


def trusted_networks(settings: IntakeSettings) -> list[Network]:
    return [
        ipaddress.ip_network(part.strip(), strict=False) for part in settings.trusted_proxies.split(",") if part.strip()
    ]


def form_origins(settings: IntakeSettings) -> list[str]:
    return [part.strip().rstrip("/") for part in settings.public_form_origins.split(",") if part.strip()]


def rate_limit_identity(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """What a rate limit counts by: the presented API key's prefix or client id, else the client IP."""
    if (key := presented_api_key(connection)) is not None:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    if client_id := connection.headers.get("x-client-id"):
        return "client:" + client_id[:64]
    settings: IntakeSettings = connection.app.state.settings
    return "ip:" + client_ip(connection, trusted_networks(settings))


PUBLIC_FORM_PATH = "/v1/leads"


def is_public_form_submission(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """``POST /v1/leads`` without credentials: it can only succeed as a public form submission."""
    return (
        connection.scope.get("method") == "POST"
        and connection.scope.get("path") == PUBLIC_FORM_PATH
        and presented_api_key(connection) is None
        and "x-signature" not in connection.headers
    )


async def authenticate(request: Request[Any, Any, Any], settings: IntakeSettings, runtime: Runtime) -> Principal:
    """The caller of ``request``; raises a 401 problem when the credentials are missing or wrong."""
    if settings.auth_mode == "disabled":
        return Principal(kind="anonymous", scopes=frozenset(SCOPES))
    challenge = {"WWW-Authenticate": 'Bearer realm="healingwork"'}
    if (key := presented_api_key(request)) is not None:
        async with runtime.pool.connection() as conn:
            client = await find_client_by_key(conn, key)
        if client is None:
            raise ProblemError(401, "The API key is unknown or revoked.", challenge)
        return Principal(kind="api_key", scopes=client.scopes, client_id=client.id, name=client.name)
    if (signature := request.headers.get("x-signature")) is not None:
        return await _verify_signature(request, signature, settings, runtime)
    origin = request.headers.get("origin", "").rstrip("/")
    if origin and origin in form_origins(settings):
        return Principal(kind="public_form", scopes=frozenset({"leads:write"}), name="public-form")
    raise ProblemError(
        401, "Authenticate with an API key (Authorization: Bearer hw_...) or a signed request.", challenge
    )


async def _verify_signature(
    request: Request[Any, Any, Any], header: str, settings: IntakeSettings, runtime: Runtime
) -> Principal:
    match = SIGNATURE_PATTERN.fullmatch(header.replace(" ", ""))
    if match is None:
        raise ProblemError(401, "X-Signature must read t=<unix seconds>,v1=<64 hex digits>.")
    try:
        client_id = uuid.UUID(request.headers.get("x-client-id", ""))
    except ValueError:
        raise ProblemError(401, "A signed request needs X-Client-Id: the client's id.") from None
    timestamp, given = int(match.group(1)), match.group(2)
    if abs(time.time() - timestamp) > settings.signature_tolerance_s:
        raise ProblemError(401, f"The signature's timestamp is more than {settings.signature_tolerance_s:g} s off.")
    body = await request.body()
    expected = hmac.new(
        signing_secret(settings.hmac_secret, client_id).encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, given):
        raise ProblemError(401, "The signature does not match the body (or the client id).")
    async with transaction(runtime.pool) as conn:
        client = await find_client_by_id(conn, client_id)
        if client is None:
            raise ProblemError(401, "The client is unknown or revoked.")
        if not await record_signature(conn, given, settings.signature_tolerance_s):
            raise ProblemError(401, "This signature was used before: sign every request afresh.")
    return Principal(kind="signature", scopes=client.scopes, client_id=client.id, name=client.name)


def requires_scope(scope: str) -> Guard:
    """A Litestar guard: the caller must authenticate and hold ``scope`` (``admin`` holds every scope)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        request: Request[Any, Any, Any] = Request(connection.scope, connection.receive)
        state = connection.app.state
        principal = await authenticate(request, state.settings, state.runtime)
        if scope not in principal.scopes and "admin" not in principal.scopes:
            raise ProblemError(403, f"This client lacks the {scope!r} scope.")
        connection.scope[PRINCIPAL_KEY] = principal  # type: ignore[literal-required]

    return guard


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """The caller, as established by :func:`requires_scope` for this request."""
    principal: Principal = request.scope[PRINCIPAL_KEY]  # type: ignore[literal-required]
    return principal
