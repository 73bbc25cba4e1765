"""API clients: named credentials with scopes. Keys are shown once and stored only as SHA-256.

A key reads ``hw_<prefix>_<secret>``: the 12-hex-digit prefix finds the row, the hash of the whole key
proves it. A client also has a request-signing secret for signed requests, derived from one of the
deployment's ``REQUEST_SIGNING_KEYS`` (its own key material: never ``HMAC_SECRET``, which the dispatcher
holds) and the client's id, so it is never stored either. The key id travels in every signature, so
while a new key is rolled out both the old and the new secrets of a client verify.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from psycopg import errors

from services.common.db import Connection

SCOPES = ("leads:write", "leads:read", "events:write", "admin")
NAME_PATTERN = re.compile(r"[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?")
KEY_PATTERN = re.compile(r"hw_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")


class InvalidClient(Exception):
    """A client cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True)
class ApiClient:
    id: uuid.UUID
    name: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str | None:
    """The lookup prefix of a well-formed key, else None (a malformed key needs no database query)."""
    match = KEY_PATTERN.fullmatch(key)
    return match.group(1) if match else None


def signing_secret(signing_key: str, client_id: uuid.UUID) -> str:
    """The client's request-signing secret under one of ``REQUEST_SIGNING_KEYS``:
    HMAC-SHA256(key, "client-signing:v2:" + id), hex."""
    return hmac.new(signing_key.encode(), f"client-signing:v2:{client_id}".encode(), hashlib.sha256).hexdigest()


def legacy_signing_secret(hmac_secret: str, client_id: uuid.UUID) -> str:
    """The secret of the old ``t=…,v1=…`` scheme, derived from ``HMAC_SECRET`` (verified only with
    ``SIGNATURE_V1_COMPAT=true``, for clients not yet moved to the canonical-request scheme)."""
    return hmac.new(hmac_secret.encode(), f"client-signing:{client_id}".encode(), hashlib.sha256).hexdigest()


def _client(row: dict[str, object]) -> ApiClient:
    return ApiClient(
        id=row["id"],  # type: ignore[arg-type]
        name=str(row["name"]),
        scopes=frozenset(row["scopes"]),  # type: ignore[call-overload]
        created_at=row["created_at"],  # type: ignore[arg-type]
        revoked_at=row["revoked_at"],  # type: ignore[arg-type]
    )


async def create_client(conn: Connection, name: str, scopes: list[str]) -> tuple[ApiClient, str]:
    """Create a client; returns it and its API key (the only time the key exists in clear)."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidClient(f"invalid name {name!r}: use lower-case letters, digits, '.', '_' or '-' (at most 64)")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidClient(f"scopes must be among {', '.join(SCOPES)} (got {', '.join(unknown) or 'none'})")
    prefix = secrets.token_hex(6)
    key = f"hw_{prefix}_{secrets.token_urlsafe(32)}"
    try:
        cursor = await conn.execute(
            """INSERT INTO api_clients (id, name, key_prefix, key_hash, scopes)
               VALUES (%s, %s, %s, %s, %s)
               RETURNING id, name, scopes, created_at, revoked_at""",
            (uuid.uuid4(), name, prefix, hash_key(key), sorted(set(scopes))),
        )
    except errors.UniqueViolation as error:
        raise InvalidClient(f"a client named {name!r} exists already (revoke it or choose another name)") from error
    row = await cursor.fetchone()
    assert row is not None
    return _client(row), key


async def list_clients(conn: Connection) -> list[ApiClient]:
    """Every client, revoked ones included, oldest first."""
    cursor = await conn.execute(
        "SELECT id, name, scopes, created_at, revoked_at FROM api_clients ORDER BY created_at, name"
    )
    return [_client(row) for row in await cursor.fetchall()]


async def revoke_client(conn: Connection, name: str) -> bool:
    """Revoke the client's key and signing secret; False if no such client. Revoking twice is a no-op."""
    cursor = await conn.execute(
        "UPDATE api_clients SET revoked_at = coalesce(revoked_at, now()) WHERE name = %s RETURNING id", (name,)
    )
    return await cursor.fetchone() is not None


async def find_client_by_key(conn: Connection, key: str) -> ApiClient | None:
    """The live client this key belongs to, else None. The hash comparison is constant-time."""
    prefix = key_prefix(key)
    if prefix is None:
        return None
    cursor = await conn.execute(
        """SELECT id, name, scopes, created_at, revoked_at, key_hash FROM api_clients
           WHERE key_prefix = %s AND revoked_at IS NULL""",
        (prefix,),
    )
    row = await cursor.fetchone()
    if row is None or not hmac.compare_digest(str(row["key_hash"]), hash_key(key)):
        return None
    return _client(row)


async def find_client_by_id(conn: Connection, client_id: uuid.UUID) -> ApiClient | None:
    """The live client with this id, else None."""
    cursor = await conn.execute(
        "SELECT id, name, scopes, created_at, revoked_at FROM api_clients WHERE id = %s AND revoked_at IS NULL",
        (client_id,),
    )
    row = await cursor.fetchone()
    return _client(row) if row else None


async def record_nonce(conn: Connection, client_id: uuid.UUID, nonce: str, tolerance_s: float) -> bool:
    """Remember a client's request nonce; False if this client used it within the tolerance window (a
    replay). Keyed on (client, nonce), not on the signature: two different requests never collide.

    Nonces older than twice the tolerance are forgotten on the way: a request carrying one can no longer
    verify, because its timestamp is outside the window.
    """
    await conn.execute(
        "DELETE FROM used_request_nonces WHERE seen_at < now() - make_interval(secs => %s)", (2 * tolerance_s,)
    )
    cursor = await conn.execute(
        """INSERT INTO used_request_nonces (client_id, nonce) VALUES (%s, %s)
           ON CONFLICT DO NOTHING RETURNING nonce""",
        (client_id, nonce),
    )
    return await cursor.fetchone() is not None


async def find_client_by_name(conn: Connection, name: str) -> ApiClient | None:
    """The live client with this name, else None."""
    cursor = await conn.execute(
        "SELECT id, name, scopes, created_at, revoked_at FROM api_clients WHERE name = %s AND revoked_at IS NULL",
        (name,),
    )
    row = await cursor.fetchone()
    return _client(row) if row else None


async def record_signature(conn: Connection, signature: str, tolerance_s: float) -> bool:
    """Remember a signature of the old v1 scheme; False if it was seen within the tolerance window.

    Signatures older than twice the tolerance are forgotten on the way: they can no longer be replayed,
    because their timestamp is outside the window.
    """
    await conn.execute(
        "DELETE FROM used_signatures WHERE seen_at < now() - make_interval(secs => %s)", (2 * tolerance_s,)
    )
    cursor = await conn.execute(
        "INSERT INTO used_signatures (signature) VALUES (%s) ON CONFLICT DO NOTHING RETURNING signature",
        (signature,),
    )
    return await cursor.fetchone() is not None
