"""Timestamped HMAC signatures of request bodies: the one verifier for every signed request.

A signature is ``hex(HMAC-SHA256(secret, "<unix seconds>.<body>"))``. Binding the timestamp into the
signed input and refusing timestamps outside a tolerance means a captured request cannot be replayed
later; binding the body means it cannot be altered. Two adapters use it: requests signed by an API
client (``X-Signature: t=…,v1=…``, keyed with the client's signing secret) and the generic provider
webhook (``Webhook-Timestamp`` + ``Webhook-Signature: v1=…``, keyed with ``WEBHOOK_SECRET``). Each
adapter parses its own headers and words its own errors (:class:`SignatureTexts`: they name the headers
the caller sent); the cryptography and the time check are here, once.

Signed links (tracking, unsubscribe) are another concept with another format: :mod:`services.common.tokens`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

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
