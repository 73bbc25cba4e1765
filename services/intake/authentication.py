"""Who is calling, decided over plain values: API keys, HMAC-signed requests, public browser forms.

No web framework here: :mod:`services.intake.auth` (the Litestar edge) reads the headers into
:class:`Credentials`, calls :func:`authenticate` and :func:`authorize`, and every failure is a domain
error below, mapped to its problem document by ``services.intake.problems``.

Credentials, in order of precedence:

* ``Authorization: Bearer hw_…`` (or ``X-API-Key: hw_…``): an API key.
* ``X-Client-Id: <client id>`` + ``X-Signature: keyid=<key id>,t=<unix seconds>,nonce=<nonce>,v2=<hex>``:
  the HMAC-SHA256 of the canonical request (method, path, query, body digest, timestamp, nonce, client,
  key id: :func:`services.common.signatures.canonical_request`) with the client's signing secret under
  that key of ``REQUEST_SIGNING_KEYS``; the timestamp must be within ``SIGNATURE_TOLERANCE_S`` and a
  client's nonce is accepted once. The old ``t=<unix>,v1=<hex of "<t>.<body>">`` only with
  ``SIGNATURE_V1_COMPAT=true``.
* none, with an ``Origin`` in ``PUBLIC_FORM_ORIGINS``: a public form, allowed ``leads:write`` only.

With ``AUTH_MODE=disabled`` (``healingwork dev`` only) every caller is anonymous and holds every scope.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import psycopg_pool

from services.common.config import IntakeSettings, signing_key_entries
from services.common.db import Connection, transaction
from services.common.errors import CallerError
from services.common.signatures import (
    SignatureTexts,
    canonical_request,
    verify_request_signature,
    verify_timestamped_signature,
)
from services.intake.clients import (
    SCOPES,
    find_client_by_id,
    find_client_by_key,
    legacy_signing_secret,
    record_nonce,
    record_signature,
    signing_secret,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Kind = Literal["api_key", "signature", "public_form", "anonymous"]
V1_SIGNATURE_PATTERN = re.compile(r"t=([0-9]{1,12}),v1=([0-9a-f]{64})")
V2_SIGNATURE_PATTERN = re.compile(
    r"keyid=([A-Za-z0-9._-]{1,32}),t=([0-9]{1,12}),nonce=([A-Za-z0-9_-]{16,64}),v2=([0-9a-f]{64})"
)
REQUEST_SIGNATURE_TEXTS = SignatureTexts(
    expired="The signature's timestamp is more than {tolerance_s:g} s off.",
    mismatch="The signature does not match the request (method, path, query, body, client id or key).",
)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    kind: Kind
    scopes: frozenset[str]
    client_id: uuid.UUID | None = None
    name: str = "anonymous"


ANONYMOUS = Principal(kind="anonymous", scopes=frozenset(SCOPES))
PUBLIC_FORM = Principal(kind="public_form", scopes=frozenset({"leads:write"}), name="public-form")


@dataclass(frozen=True)
class Credentials:
    """What a request presents, as the edge read it from the headers (nothing verified yet).

    ``body`` reads the request body; it is awaited only for a signed request (the signature covers it).
    """

    api_key: str | None
    signature: str | None
    client_id: str | None
    origin: str | None
    body: Callable[[], Awaitable[bytes]]
    # What a signed request's signature covers besides the body (the path as routed, the raw query).
    method: str = "GET"
    path: str = "/"
    query: str = ""


# --- the failures a caller can cause -------------------------------------------------------------


class AuthenticationFailed(CallerError):
    """The request's credentials are missing or wrong (401); the message says which, for the caller."""

    message = "Authentication failed."


class MissingCredentials(AuthenticationFailed):
    message = "Authenticate with an API key (Authorization: Bearer hw_...) or a signed request."


class UnknownApiKey(AuthenticationFailed):
    message = "The API key is unknown or revoked."


class MalformedSignature(AuthenticationFailed):
    message = "X-Signature must read keyid=<key id>,t=<unix seconds>,nonce=<16-64 of A-Z a-z 0-9 _ ->,v2=<64 hex>."


class LegacySignatureRefused(AuthenticationFailed):
    message = "The t=...,v1=... signature scheme is turned off: sign the canonical request (v2, docs/security.md)."


class SigningNotConfigured(AuthenticationFailed):
    message = "Signed requests are not configured on this server (REQUEST_SIGNING_KEYS): use an API key."


class UnknownSigningKey(AuthenticationFailed):
    message = "The signature's keyid is not a current signing key: get a new signing secret for this client."


class MissingClientId(AuthenticationFailed):
    message = "A signed request needs X-Client-Id: the client's id."


class UnknownClient(AuthenticationFailed):
    message = "The client is unknown or revoked."


class ReplayedSignature(AuthenticationFailed):
    message = "This nonce (or signature) was used before: sign every request afresh with a new nonce."


class MissingScope(Exception):
    """The caller is authenticated but lacks the scope the route needs (403)."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"This client lacks the {scope!r} scope.")
        self.scope = scope


# --- reading headers -----------------------------------------------------------------------------


def presented_api_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The API key of ``Authorization: Bearer …`` or else ``X-API-Key``, unverified."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return x_api_key or None


def resolve_client_ip(peer: str, forwarded_for: Iterable[str], trusted: list[Network]) -> str:
    """The caller's IP: ``peer``, unless it is a trusted proxy; then the right-most untrusted address of
    the ``X-Forwarded-For`` values (addresses a client wrote itself sit to the left and are never
    believed)."""

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    if not is_trusted(peer):
        return peer
    forwarded = [part.strip() for part in ",".join(forwarded_for).split(",")]
    for address in reversed([part for part in forwarded if part]):
        if not is_trusted(address):
            try:
                return str(ipaddress.ip_address(address))
            except ValueError:
                return peer
    return peer


def trusted_networks(settings: IntakeSettings) -> list[Network]:
    """``TRUSTED_PROXIES`` as networks."""
    return [
        ipaddress.ip_network(part.strip(), strict=False) for part in settings.trusted_proxies.split(",") if part.strip()
    ]


def form_origins(settings: IntakeSettings) -> list[str]:
    """``PUBLIC_FORM_ORIGINS`` as origins without a trailing slash."""
    return [part.strip().rstrip("/") for part in settings.public_form_origins.split(",") if part.strip()]


# --- deciding ------------------------------------------------------------------------------------


async def authenticate(
    pool: psycopg_pool.AsyncConnectionPool[Connection],
    credentials: Credentials,
    settings: IntakeSettings,
    *,
    now: float,
) -> Principal:
    """The caller presenting ``credentials`` at Unix time ``now``; raises an :class:`AuthenticationFailed`."""
    if settings.auth_mode == "disabled":
        return ANONYMOUS
    if credentials.api_key is not None:
        async with pool.connection() as conn:
            client = await find_client_by_key(conn, credentials.api_key)
        if client is None:
            raise UnknownApiKey
        return Principal(kind="api_key", scopes=client.scopes, client_id=client.id, name=client.name)
    if credentials.signature is not None:
        return await verify_signed_request(pool, credentials, settings, now=now)
    origin = (credentials.origin or "").rstrip("/")
    if origin and origin in form_origins(settings):
        return PUBLIC_FORM
    raise MissingCredentials


async def verify_signed_request(
    pool: psycopg_pool.AsyncConnectionPool[Connection],
    credentials: Credentials,
    settings: IntakeSettings,
    *,
    now: float,
) -> Principal:
    """The live client whose signing secret signed this request recently, recording its nonce so it is
    accepted once; raises an :class:`AuthenticationFailed` (or a ``SignatureRejected``) otherwise.
    Nothing is written before the signature verifies."""
    header = (credentials.signature or "").replace(" ", "")
    legacy = V1_SIGNATURE_PATTERN.fullmatch(header)
    if legacy is not None:
        if not settings.signature_v1_compat:
            raise LegacySignatureRefused
        return await _verify_v1(pool, legacy, credentials, settings, now=now)
    match = V2_SIGNATURE_PATTERN.fullmatch(header)
    if match is None:
        raise MalformedSignature
    client_id = _client_id(credentials)
    key_id, timestamp, nonce, given = match.groups()
    keys = dict(signing_key_entries(settings.request_signing_keys))
    if not keys:
        raise SigningNotConfigured
    if key_id not in keys:
        raise UnknownSigningKey
    canonical = canonical_request(
        method=credentials.method,
        path=credentials.path,
        query=credentials.query,
        body=await credentials.body(),
        timestamp=timestamp,
        nonce=nonce,
        client_id=str(client_id),
        key_id=key_id,
    )
    verify_request_signature(
        signing_secret(keys[key_id], client_id),
        canonical,
        timestamp,
        given,
        tolerance_s=settings.signature_tolerance_s,
        now=now,
        texts=REQUEST_SIGNATURE_TEXTS,
    )
    async with transaction(pool) as conn:
        client = await find_client_by_id(conn, client_id)
        if client is None:
            raise UnknownClient
        if not await record_nonce(conn, client_id, nonce, settings.signature_tolerance_s):
            raise ReplayedSignature
    return Principal(kind="signature", scopes=client.scopes, client_id=client.id, name=client.name)


def _client_id(credentials: Credentials) -> uuid.UUID:
    try:
        return uuid.UUID(credentials.client_id or "")
    except ValueError:
        raise MissingClientId from None


async def _verify_v1(
    pool: psycopg_pool.AsyncConnectionPool[Connection],
    match: re.Match[str],
    credentials: Credentials,
    settings: IntakeSettings,
    *,
    now: float,
) -> Principal:
    """The old scheme (``SIGNATURE_V1_COMPAT=true`` only): ``"<t>.<body>"`` signed with a secret derived
    from ``HMAC_SECRET``, each signature accepted once."""
    client_id = _client_id(credentials)
    timestamp, given = match.group(1), match.group(2)
    verify_timestamped_signature(
        legacy_signing_secret(settings.hmac_secret, client_id),
        timestamp,
        [given],
        await credentials.body(),
        tolerance_s=settings.signature_tolerance_s,
        now=now,
        texts=REQUEST_SIGNATURE_TEXTS,
    )
    async with transaction(pool) as conn:
        client = await find_client_by_id(conn, client_id)
        if client is None:
            raise UnknownClient
        if not await record_signature(conn, given, settings.signature_tolerance_s):
            raise ReplayedSignature
    return Principal(kind="signature", scopes=client.scopes, client_id=client.id, name=client.name)


def authorize(principal: Principal, scope: str) -> None:
    """Return if ``principal`` holds ``scope`` (``admin`` holds every scope); raise :class:`MissingScope`."""
    if scope not in principal.scopes and "admin" not in principal.scopes:
        raise MissingScope(scope)
