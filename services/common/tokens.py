"""Signed tokens for tracking, unsubscribe and double opt-in confirmation links.

A token is ``base64url(payload) "." base64url(HMAC-SHA256(secret, purpose-bound payload))``. The payload
carries a version, the purpose (open, click, unsubscribe, confirm), an id (the message's; for a
confirmation the lead's) and, for clicks, the one URL the link may redirect to. The purpose is part
of both the payload and the signed input, so an open token can never be used to unsubscribe someone.
Verification tries the current secret, then the previous one, so ``HMAC_SECRET`` rotates without
breaking links already in inboxes. Anything that does not verify is :class:`InvalidToken`, with no
detail a forger could learn from.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from enum import Enum

_VERSION = 1
_DOMAIN = b"healingwork-link-token\x00"
# URLs longer than this are not rewritten for click tracking (links stay direct).
MAX_CLICK_URL_BYTES = 2000


class Purpose(Enum):
    OPEN = "o"
    CLICK = "c"
    UNSUBSCRIBE = "u"
    # Double opt-in: the id is the lead's. How long it works is the lead's (CONFIRMATION_EXPIRY_HOURS).
    CONFIRM = "d"


# A payload's first bytes: the version and the purpose (spelled once, not per token).
_PAYLOAD_PREFIXES = {purpose: bytes([_VERSION]) + purpose.value.encode() for purpose in Purpose}


class InvalidToken(Exception):
    """A token that is malformed, tampered, truncated, signed with an unknown key or for another purpose."""


@dataclass(frozen=True)
class Token:
    purpose: Purpose
    message_id: uuid.UUID
    url: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.lru_cache(maxsize=8)
def _keyed(secret: str) -> hmac.HMAC:
    """An HMAC keyed with ``secret`` that has already taken the domain prefix. Keying (hashing the key
    into the inner and outer pads) costs as much as the rest of a token; a copy skips it. A few entries
    suffice: the current secret, the previous one, a preview's."""
    return hmac.new(secret.encode(), _DOMAIN, hashlib.sha256)


def _mac(secret: str, payload: bytes) -> bytes:
    mac = _keyed(secret).copy()  # the cached object is never updated itself
    mac.update(payload)
    return mac.digest()


def sign_token(secret: str, purpose: Purpose, message_id: uuid.UUID, url: str | None = None) -> str:
    """A token for ``purpose`` on ``message_id``; click tokens bind the URL they redirect to."""
    if (url is not None) != (purpose is Purpose.CLICK):
        raise ValueError("a URL is bound into click tokens, and only into them")
    payload = _PAYLOAD_PREFIXES[purpose] + message_id.bytes + (url or "").encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify_token(token: str, purpose: Purpose, secrets: list[str]) -> Token:
    """The token's content if it verifies under one of ``secrets`` (current first) and is for ``purpose``."""
    encoded_payload, dot, encoded_mac = token.partition(".")
    if not dot or len(token) > 4 * MAX_CLICK_URL_BYTES:
        raise InvalidToken
    try:
        payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
    except (binascii.Error, ValueError) as error:
        raise InvalidToken from error
    # Base64 has spare bits in its last character: a token is valid in its one canonical spelling only.
    if _b64(payload) != encoded_payload or _b64(mac) != encoded_mac:
        raise InvalidToken
    if not any(hmac.compare_digest(mac, _mac(secret, payload)) for secret in secrets if secret):
        raise InvalidToken
    if len(payload) < 18 or payload[0] != _VERSION or payload[1:2] != purpose.value.encode():
        raise InvalidToken
    message_id = uuid.UUID(bytes=payload[2:18])
    if purpose is not Purpose.CLICK:
        if len(payload) != 18:
            raise InvalidToken
        return Token(purpose, message_id)
    try:
        url = payload[18:].decode()
    except UnicodeDecodeError as error:
        raise InvalidToken from error
    return Token(purpose, message_id, url)
