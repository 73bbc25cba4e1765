"""The Standard Webhooks headers of one attempt (https://www.standardwebhooks.com, version 1.0.0).

``webhook-id`` names the message and is the same on every attempt (receivers deduplicate on it);
``webhook-timestamp`` is the attempt's time in integer Unix seconds; ``webhook-signature`` is
``v1,`` + base64 of HMAC-SHA256 over ``{id}.{timestamp}.{body}``, keyed with the base64-decoded part
of the ``whsec_`` secret. The timestamp (and so the signature) is fresh on every attempt, so a
receiver's replay window stays short however long a delivery was retried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from services.common.webhook_secrets import secret_key_bytes


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secret: str, webhook_id: str, timestamp: int, body: bytes, *, previous_secret: str | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt. With ``previous_secret`` (a rotation's grace
    period) ``webhook-signature`` holds two space-separated signatures, the new secret's first, as the
    specification allows: a receiver holding either secret verifies."""
    signatures = [signature(secret, webhook_id, timestamp, body)]
    if previous_secret is not None:
        signatures.append(signature(previous_secret, webhook_id, timestamp, body))
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }
