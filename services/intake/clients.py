"""API clients: named credentials with scopes. Keys are shown once and stored only as SHA-256.

A key reads ``hw_<prefix>_<secret>``: the 12-hex-digit prefix finds the row, the hash of the whole key
proves it. A client also has a request-signing secret for HMAC-signed requests, derived from the
deployment's ``HMAC_SECRET`` and the client's id, so it is never stored either.
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

SCOPES = ("leads:write", "leads:read", "admin")
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


def signing_secret(hmac_secret: str, client_id: uuid.UUID) -> str:
    """The client's request-signing secret: HMAC-SHA256(HMAC_SECRET, "client-signing:" + id), hex."""
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


async def record_signature(conn: Connection, signature: str, tolerance_s: float) -> bool:
    """Remember a signature; False if it was seen within the tolerance window (a replay).

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
