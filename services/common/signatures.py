"""Timestamped HMAC signatures of request bodies: the one verifier for every signed request.

A signature is ``hex(HMAC-SHA256(secret, "<unix seconds>.<body>"))``. Binding the timestamp into the
signed input and refusing timestamps outside a tolerance means a captured request cannot be replayed
later; binding the body means it cannot be altered. Two adapters use it: requests signed by an API
client (``X-Signature: t=…,v1=…``, keyed with the client's signing secret) and the generic provider
webhook (``Webhook-Timestamp`` + ``Webhook-Signature: v1=…``, keyed with ``WEBHOOK_SECRET``). Each
adapter parses its own headers and words its own errors (:class:`SignatureTexts`: they name the headers
the caller sent); the cryptography and the time check are here, once.

Signed API requests (scheme ``v2``) sign more than the body: a *canonical request* — the method, the
path, the canonicalised query, a SHA-256 digest of the body, the timestamp, a client nonce, the client
id and the signing key id (:func:`canonical_request`) — so a signature captured for one request cannot
be spent on another (``GET /v1/leads/<a>`` is not ``DELETE /v1/leads/<b>``). docs/security.md has the
format with a worked example.

Signed links (tracking, unsubscribe) are another concept with another format: :mod:`services.common.tokens`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from services.common.errors import CallerError


class SignatureRejected(CallerError):
    """A signed request that does not verify; the message says why, for the caller."""


class SignatureExpired(SignatureRejected):
    """The signature's timestamp is outside the tolerance (a replay, or a clock far off)."""


class SignatureMismatch(SignatureRejected):
    """No offered signature matches the body, the timestamp and the secret."""


@dataclass(frozen=True)
class SignatureTexts:
    """How an adapter words the two failures; ``expired`` may use ``{tolerance_s}``."""

    expired: str
    mismatch: str


def timestamped_signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """The hex signature of ``body`` sent at ``timestamp`` (what a sender computes): the timestamp is
    signed as it is written in the request."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_timestamped_signature(
    secret: str,
    timestamp: str,
    offered: Iterable[str],
    body: bytes,
    *,
    tolerance_s: float,
    now: float,
    texts: SignatureTexts,
) -> None:
    """Return if one of ``offered`` signs ``body`` at ``timestamp`` with ``secret`` and the timestamp is
    within ``tolerance_s`` of ``now``; raise :class:`SignatureExpired` or :class:`SignatureMismatch`.

    ``timestamp`` is the Unix time in seconds as the request wrote it (the adapter has checked that it
    is an integer; it is signed as written). The time is checked first; the comparison is constant-time.
    """
    # Compared, not subtracted: an int of hundreds of digits does not fit a float (OverflowError).
    if not now - tolerance_s <= int(timestamp) <= now + tolerance_s:
        raise SignatureExpired(texts.expired.format(tolerance_s=tolerance_s))
    expected = timestamped_signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise SignatureMismatch(texts.mismatch)


# --- signed API requests (scheme v2): the canonical request ---------------------------------------

REQUEST_SIGNATURE_SCHEME = "HW-HMAC-SHA256-V2"
_UNRESERVED = "-_.~"  # RFC 3986 unreserved characters besides letters and digits: never percent-encoded


def canonical_query(query: str) -> str:
    """The query string in canonical form: every ``name=value`` pair decoded, then re-encoded with RFC
    3986 percent-encoding (only ``A-Z a-z 0-9 - _ . ~`` left as they are; a space is ``%20``), sorted
    by name then value, joined with ``&``. A pair without ``=`` has an empty value; empty input is empty.
    """
    pairs = parse_qsl(query, keep_blank_values=True)
    return "&".join(
        f"{quote(name, safe=_UNRESERVED)}={quote(value, safe=_UNRESERVED)}" for name, value in sorted(pairs)
    )


def canonical_request(
    *, method: str, path: str, query: str, body: bytes, timestamp: str, nonce: str, client_id: str, key_id: str
) -> bytes:
    """The bytes a client signs (and the intake recomputes): nine lines joined by ``\n``, no final newline.

    ``HW-HMAC-SHA256-V2``, the method in upper case, the path as routed (percent-decoded), the canonical
    query (:func:`canonical_query`), the hex SHA-256 of the body (of zero bytes for a bodiless request),
    the timestamp (Unix seconds, as sent), the nonce, the client id and the signing key id.
    """
    lines = [
        REQUEST_SIGNATURE_SCHEME,
        method.upper(),
        path,
        canonical_query(query),
        hashlib.sha256(body).hexdigest(),
        timestamp,
        nonce,
        client_id,
        key_id,
    ]
    return "\n".join(lines).encode()


def request_signature(secret: str, canonical: bytes) -> str:
    """The hex HMAC-SHA256 of a canonical request with the client's signing secret."""
    return hmac.new(secret.encode(), canonical, hashlib.sha256).hexdigest()


def verify_request_signature(
    secret: str,
    canonical: bytes,
    timestamp: str,
    offered: str,
    *,
    tolerance_s: float,
    now: float,
    texts: SignatureTexts,
) -> None:
    """Return if ``offered`` signs ``canonical`` with ``secret`` and ``timestamp`` (integer Unix seconds,
    as written) is within ``tolerance_s`` of ``now``; raise :class:`SignatureExpired` or
    :class:`SignatureMismatch`. The time is checked first; the comparison is constant-time."""
    if not now - tolerance_s <= int(timestamp) <= now + tolerance_s:
        raise SignatureExpired(texts.expired.format(tolerance_s=tolerance_s))
    if not hmac.compare_digest(request_signature(secret, canonical), offered):
        raise SignatureMismatch(texts.mismatch)
