"""Idempotency-Key: a retried ``POST /v1/leads`` with the same key and body gets the first answer.

Keys are scoped by client (an API client's id, or ``public:<ip>`` for browser forms) and kept for a
configurable time. Concurrent requests with one key serialize on a transaction-scoped advisory lock,
so exactly one of them does the work and the others read its answer.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta

from proto.http import LeadReceipt
from services.common.db import Connection

KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")


class IdempotencyKeyReused(Exception):
    """The key was used before with a different request body."""


@dataclass(frozen=True)
class IdempotencyKey:
    scope: str
    key: str
    request_hash: str

    @classmethod
    def of(cls, scope: str, key: str, body: bytes) -> IdempotencyKey:
        return cls(scope=scope, key=key, request_hash=hashlib.sha256(body).hexdigest())


def valid_idempotency_key(value: str) -> bool:
    """1 to 255 visible ASCII characters (a UUID is the usual choice)."""
    return KEY_PATTERN.fullmatch(value) is not None


async def claim_idempotency_key(conn: Connection, idem: IdempotencyKey, ttl: timedelta) -> LeadReceipt | None:
    """Lock the key for this transaction; return the first answer if the key was already used.

    Raises :class:`IdempotencyKeyReused` when the stored request differs. An expired key is forgotten.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{idem.scope} {idem.key}",))
    cursor = await conn.execute(
        """SELECT request_hash, lead_id, duplicate, created_at > now() - %s AS live
           FROM idempotency_keys WHERE scope = %s AND key = %s""",
        (ttl, idem.scope, idem.key),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    if not row["live"]:
        await conn.execute("DELETE FROM idempotency_keys WHERE scope = %s AND key = %s", (idem.scope, idem.key))
        return None
    if row["request_hash"] != idem.request_hash:
        raise IdempotencyKeyReused
    return LeadReceipt(id=row["lead_id"], duplicate=bool(row["duplicate"]))  # type: ignore[arg-type]


async def remember_receipt(conn: Connection, idem: IdempotencyKey, receipt: LeadReceipt) -> None:
    """Store the answer under the key, in the transaction that produced it."""
    await conn.execute(
        """INSERT INTO idempotency_keys (scope, key, request_hash, status, lead_id, duplicate)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (idem.scope, idem.key, idem.request_hash, 200 if receipt.duplicate else 202, receipt.id, receipt.duplicate),
    )
