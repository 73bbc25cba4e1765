"""Signing secrets of outgoing webhook endpoints: made (``whsec_`` + base64, as the Standard Webhooks
specification writes them), and kept encrypted at rest.

The secret is shown to the admin once, when the endpoint is registered; PostgreSQL keeps it encrypted
with AES-256-GCM under a key derived (HKDF-SHA256) from ``HMAC_SECRET``, with the endpoint's id as the
associated data (a ciphertext copied onto another endpoint does not decrypt). So a database dump alone
does not give the secrets away. While ``HMAC_SECRET`` rotates, secrets encrypted under
``HMAC_SECRET_PREVIOUS`` still decrypt (:func:`decrypt_secret` tries both keys).
"""

from __future__ import annotations

import base64
import os
import secrets
import uuid
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix the specification gives secrets, not a secret
# 32 random bytes: within the specification's 24-64 and as strong as the HMAC-SHA256 it keys.
SECRET_BYTES = 32
_KEY_INFO = b"healingwork outgoing webhook endpoint secrets v1"
_NONCE_BYTES = 12


class UndecryptableSecret(Exception):
    """No configured key decrypts an endpoint's secret (HMAC_SECRET changed without HMAC_SECRET_PREVIOUS)."""


def new_signing_secret() -> str:
    """A fresh endpoint secret as shown to the admin: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key_bytes(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret stands for (the base64 after the prefix)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def _encryption_key(hmac_secret: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(hmac_secret.encode())


def encrypt_secret(secret: str, endpoint_id: uuid.UUID, hmac_secret: str) -> bytes:
    """``secret`` encrypted for storage: nonce + AES-256-GCM ciphertext, bound to ``endpoint_id``."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(_encryption_key(hmac_secret)).encrypt(nonce, secret.encode(), endpoint_id.bytes)


def decrypt_secret(stored: bytes, endpoint_id: uuid.UUID, hmac_secrets: Sequence[str]) -> str:
    """The secret :func:`encrypt_secret` stored, decrypted with the first of ``hmac_secrets`` that works
    (the current one, then the previous one); raises :class:`UndecryptableSecret` if none does."""
    nonce, ciphertext = stored[:_NONCE_BYTES], stored[_NONCE_BYTES:]
    for hmac_secret in filter(None, hmac_secrets):
        try:
            return AESGCM(_encryption_key(hmac_secret)).decrypt(nonce, ciphertext, endpoint_id.bytes).decode()
        except InvalidTag:
            continue
    raise UndecryptableSecret(f"no configured HMAC_SECRET decrypts the secret of webhook endpoint {endpoint_id}")
