"""Delivering: claim due deliveries, and record each attempt's outcome on the retry schedule.

The schedule lives in PostgreSQL (``next_attempt_at``), never in a sleeping process, so a restart
loses nothing. A claim counts the attempt and pushes ``next_attempt_at`` past the longest an attempt
can take (the lease): a process that dies mid-attempt leaves the row due again a little later, and
whoever claims it sends the same body under the same ``webhook-id`` (at least once).

After a failed attempt the next one waits the schedule's next delay (with up to 10 % jitter, so
endpoints that failed together do not retry together); after the last, the delivery is ``failed``,
and when nothing reached the endpoint since that delivery was created (failing for the whole
schedule, about 27.5 hours by default) and no admin enabled it again since then, the endpoint is
disabled and a ``webhook_endpoint.disabled`` event is fanned out to the other endpoints subscribed to it.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.common import metrics
from services.common.db import Connection
from services.common.webhook_events import ENDPOINT_DISABLED, WebhookEvent
from services.common.webhook_secrets import UndecryptableSecret, decrypt_secret, encrypt_secret
from services.outgoing_webhooks.fanout import fan_out

log = logging.getLogger(__name__)

# What an attempt may take beyond the HTTP timeout before its claim lapses (signing, recording): a delivery
# whose process died mid-attempt is due again WEBHOOK_TIMEOUT_S + this later.
LEASE_MARGIN_S = 20.0
MAX_ERROR_CHARS = 500


def parse_schedule(text: str) -> list[float]:
    """``WEBHOOK_RETRY_SCHEDULE_S`` as delays in seconds (validated at start-up by the settings)."""
    return [float(part) for part in text.split(",")]


@dataclass(frozen=True)
class Claimed:
    """A delivery claimed for one attempt."""

    id: uuid.UUID
    endpoint_id: uuid.UUID
    url: str
    # None when no configured HMAC_SECRET decrypts the endpoint's secret: the attempt fails unsent.
    secret: str | None
    # The secret before the last rotation while its grace period runs (it signs too), else None.
    previous_secret: str | None
    body: bytes
    attempt: int  # 1 for the first
    created_at: datetime

    @property
    def webhook_id(self) -> str:
        return str(self.id)


_CLAIM = """
    WITH due AS (
        SELECT d.id FROM webhook_deliveries d
        JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.status = 'enabled'
        WHERE d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT %(limit)s
        FOR UPDATE OF d SKIP LOCKED)
    UPDATE webhook_deliveries d
    SET attempts = d.attempts + 1, last_attempt_at = now(), next_attempt_at = now() + %(lease)s
    FROM due, webhook_endpoints e
    WHERE d.id = due.id AND e.id = d.endpoint_id
    RETURNING d.id, d.endpoint_id, e.url, e.secret_ciphertext, d.body, d.attempts, d.created_at,
              CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret_ciphertext END
                  AS previous_secret_ciphertext"""


async def claim_due_deliveries(
    conn: Connection, *, limit: int, lease_s: float, hmac_secrets: list[str]
) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries of enabled endpoints for one attempt each (see the module
    docstring); their secrets decrypted (and the previous one, during a rotation's grace period)."""
    cursor = await conn.execute(_CLAIM, {"limit": limit, "lease": timedelta(seconds=lease_s)})
    claimed = []
    for row in await cursor.fetchall():
        endpoint_id: uuid.UUID = row["endpoint_id"]  # type: ignore[assignment]
        claimed.append(
            Claimed(
                id=row["id"],  # type: ignore[arg-type]
                endpoint_id=endpoint_id,
                url=row["url"],  # type: ignore[arg-type]
                secret=_decrypted(row["secret_ciphertext"], endpoint_id, hmac_secrets),  # type: ignore[arg-type]
                previous_secret=(
                    _decrypted(row["previous_secret_ciphertext"], endpoint_id, hmac_secrets)  # type: ignore[arg-type]
                    if row["previous_secret_ciphertext"] is not None
                    else None
                ),
                body=row["body"],  # type: ignore[arg-type]
                attempt=row["attempts"],  # type: ignore[arg-type]
                created_at=row["created_at"],  # type: ignore[arg-type]
            )
        )
    return claimed


def _decrypted(stored: bytes, endpoint_id: uuid.UUID, hmac_secrets: list[str]) -> str | None:
    try:
        return decrypt_secret(stored, endpoint_id, hmac_secrets)
    except UndecryptableSecret as error:
        log.error("cannot sign a webhook", extra={"endpoint": str(endpoint_id), "error": str(error)})
        return None


async def reencrypt_secrets(conn: Connection, *, hmac_secret: str, hmac_secret_previous: str) -> int:
    """Encrypt again under ``hmac_secret`` every endpoint secret (and previous secret, during a rotation's
    grace period) that only ``hmac_secret_previous`` decrypts (after a rotation of HMAC_SECRET), so the
    previous HMAC_SECRET can be retired; returns how many endpoints changed."""
    if not hmac_secret_previous:
        return 0
    cursor = await conn.execute(
        "SELECT id, secret_ciphertext, previous_secret_ciphertext FROM webhook_endpoints FOR UPDATE"
    )
    renewed = 0
    for row in await cursor.fetchall():
        endpoint_id: uuid.UUID = row["id"]  # type: ignore[assignment]
        changed = False
        for column in ("secret_ciphertext", "previous_secret_ciphertext"):
            stored: bytes | None = row[column]  # type: ignore[assignment]
            if stored is None:
                continue
            again = _reencrypted(
                stored, endpoint_id, hmac_secret=hmac_secret, hmac_secret_previous=hmac_secret_previous
            )
            if again is None:
                continue
            await conn.execute(
                f"UPDATE webhook_endpoints SET {column} = %s WHERE id = %s",  # noqa: S608 - constant columns
                (again, endpoint_id),
            )
            changed = True
        renewed += changed
    return renewed


def _reencrypted(stored: bytes, endpoint_id: uuid.UUID, *, hmac_secret: str, hmac_secret_previous: str) -> bytes | None:
    """``stored`` encrypted under ``hmac_secret`` when only ``hmac_secret_previous`` decrypts it, else None."""
    try:
        decrypt_secret(stored, endpoint_id, [hmac_secret])
        return None
    except UndecryptableSecret:
        pass
    try:
        secret = decrypt_secret(stored, endpoint_id, [hmac_secret_previous])
    except UndecryptableSecret:
        return None  # neither key: reported when its deliveries are attempted
    return encrypt_secret(secret, endpoint_id, hmac_secret)


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: an HTTP status (and the first KiB of the body), or an error."""

    status: int | None = None
    body: bytes = b""
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _stored_text(body: bytes) -> str:
    """At most 1 KiB of UTF-8 (a character cut in two is dropped)."""
    return body[:1024].decode("utf-8", errors="ignore").replace("\x00", "")


async def record_outcome(
    conn: Connection, delivery: Claimed, outcome: Outcome, *, schedule: list[float], now: datetime
) -> str:
    """Record ``outcome`` of ``delivery``'s attempt; returns ``delivered``, ``retrying`` or ``failed``
    (and disables the endpoint as the module docstring says)."""
    common = {
        "id": delivery.id,
        "attempt": delivery.attempt,
        "status": outcome.status,
        "body": _stored_text(outcome.body) if outcome.status is not None else None,
        "error": (outcome.error or "")[:MAX_ERROR_CHARS] or None,
    }
    if outcome.succeeded:
        await conn.execute(
            """UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(), response_status = %(status)s,
                      response_body = %(body)s, last_error = NULL
               WHERE id = %(id)s AND attempts = %(attempt)s""",
            common,
        )
        await conn.execute(
            "UPDATE webhook_endpoints SET last_success_at = now() WHERE id = %s", (delivery.endpoint_id,)
        )
        return "delivered"
    if delivery.attempt <= len(schedule):
        delay = schedule[delivery.attempt - 1]
        delay += random.uniform(0, delay / 10)
        await conn.execute(
            """UPDATE webhook_deliveries SET next_attempt_at = %(next)s, response_status = %(status)s,
                      response_body = %(body)s, last_error = %(error)s
               WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'pending'""",
            {**common, "next": now + timedelta(seconds=delay)},
        )
        return "retrying"
    await conn.execute(
        """UPDATE webhook_deliveries SET status = 'failed', response_status = %(status)s,
                  response_body = %(body)s, last_error = %(error)s
           WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'pending'""",
        common,
    )
    await disable_if_persistently_failing(conn, delivery, now=now)
    return "failed"


async def disable_if_persistently_failing(conn: Connection, delivery: Claimed, *, now: datetime) -> bool:
    """Disable ``delivery``'s endpoint when nothing reached it since the delivery was created and no admin
    enabled it again since then, and announce it (``webhook_endpoint.disabled``) to the other subscribed
    endpoints; returns whether it was disabled now."""
    cursor = await conn.execute(
        """UPDATE webhook_endpoints
           SET status = 'disabled', disabled_at = now(),
               disabled_reason = 'every delivery failed since ' || to_char(%(since)s AT TIME ZONE 'UTC',
                                                                           'YYYY-MM-DD"T"HH24:MI:SS"Z"')
           WHERE id = %(endpoint)s AND status = 'enabled'
             AND (last_success_at IS NULL OR last_success_at < %(since)s)
             AND (enabled_at IS NULL OR enabled_at < %(since)s)
           RETURNING url, disabled_reason""",
        {"endpoint": delivery.endpoint_id, "since": delivery.created_at},
    )
    row = await cursor.fetchone()
    if row is None:
        return False
    event = WebhookEvent(
        # One announcement per disabling: the endpoint and the failed delivery that disabled it.
        id=uuid.uuid5(delivery.endpoint_id, f"disabled:{delivery.id}"),
        type=ENDPOINT_DISABLED,
        occurred_at=now,
        data={"endpoint_id": str(delivery.endpoint_id), "url": row["url"], "reason": row["disabled_reason"]},
    )
    await fan_out(conn, [event], excluded=[delivery.endpoint_id])
    metrics.OUTGOING_WEBHOOK_ENDPOINTS_DISABLED.inc()
    log.warning(
        "webhook endpoint disabled after persistent failure",
        extra={"endpoint": str(delivery.endpoint_id), "reason": row["disabled_reason"]},
    )
    return True


async def delivery_backlog(conn: Connection) -> list[tuple[uuid.UUID, int, float]]:
    """Per endpoint with pending deliveries: (endpoint, pending count, age in seconds of the oldest)."""
    cursor = await conn.execute(
        """SELECT endpoint_id, count(*) AS pending, extract(epoch FROM now() - min(created_at)) AS age
           FROM webhook_deliveries WHERE status = 'pending' GROUP BY endpoint_id"""
    )
    return [
        (row["endpoint_id"], int(row["pending"]), float(row["age"]))  # type: ignore[misc, call-overload, arg-type]
        for row in await cursor.fetchall()
    ]
