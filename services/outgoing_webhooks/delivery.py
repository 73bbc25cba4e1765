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

Outcomes are recorded in groups (:func:`record_outcomes`, one transaction per group, the deliverer's
group commit): the successes in one statement and their endpoints' ``last_success_at`` in another,
whatever the group's size; each endpoint row is updated once per group instead of once per success, so
concurrent successes to one endpoint no longer queue behind each other's row lock.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.common import metrics
from services.common.clock import database_now
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
        # In id order, as a group of outcomes locks them: a re-encryption and a group never deadlock.
        "SELECT id, secret_ciphertext, previous_secret_ciphertext FROM webhook_endpoints ORDER BY id FOR UPDATE"
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


@dataclass(frozen=True)
class Attempted:
    """A claimed delivery and how its attempt ended: one item of a group of outcomes to record."""

    delivery: Claimed
    outcome: Outcome


def _result_of(attempted: Attempted, schedule: list[float]) -> str:
    """``delivered``, ``retrying`` (the schedule has another attempt) or ``failed`` (it ran out)."""
    if attempted.outcome.succeeded:
        return "delivered"
    return "retrying" if attempted.delivery.attempt <= len(schedule) else "failed"


# Every row keeps its guard: an attempt whose lease ran out (and was claimed again) records nothing.
_RECORD_DELIVERED = """
    UPDATE webhook_deliveries d
    SET status = 'delivered', delivered_at = now(), response_status = a.status, response_body = a.body,
        last_error = NULL
    FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(statuses)s::int[], %(bodies)s::text[])
        AS a(id, attempt, status, body)
    WHERE d.id = a.id AND d.attempts = a.attempt"""

# The group's endpoints are locked in one statement, in id order (the locking clause locks rows as the
# sort returns them), so two replicas' groups never wait on each other in a cycle; those of final
# failures too, which the disable rule may update later in the transaction. NO KEY UPDATE, as an UPDATE
# of these columns takes: it does not block the foreign-key checks of deliveries being inserted.
_LOCK_ENDPOINTS_NOTE_SUCCESSES = """
    WITH locked AS (
        SELECT id FROM webhook_endpoints WHERE id = ANY (%(touched)s::uuid[]) ORDER BY id FOR NO KEY UPDATE)
    UPDATE webhook_endpoints e SET last_success_at = now()
    FROM locked WHERE e.id = locked.id AND e.id = ANY (%(succeeded)s::uuid[])"""


async def record_outcomes(conn: Connection, group: Sequence[Attempted], *, schedule: list[float]) -> list[str]:
    """Record the outcomes of ``group`` (in the caller's transaction); returns each one's result,
    in order: ``delivered``, ``retrying`` or ``failed`` (the schedule ran out).

    Set-based for the common case: one statement records every success, one sets ``last_success_at``
    of their endpoints (locking, in id order, every endpoint the group may update). Successes go
    first, so a final failure to the same endpoint in this group sees that success and does not
    disable it (module docstring); retries and final failures, rare, then go row by row, with the
    database's time read once (and only if there are any).
    """
    results = [_result_of(attempted, schedule) for attempted in group]
    delivered = [a for a, result in zip(group, results, strict=True) if result == "delivered"]
    failed = [a for a, result in zip(group, results, strict=True) if result == "failed"]
    if delivered:
        await conn.execute(
            _RECORD_DELIVERED,
            {
                "ids": [a.delivery.id for a in delivered],
                "attempts": [a.delivery.attempt for a in delivered],
                "statuses": [a.outcome.status for a in delivered],
                "bodies": [_stored_text(a.outcome.body) for a in delivered],
            },
        )
    touched = {a.delivery.endpoint_id for a in delivered + failed}
    if touched:
        await conn.execute(
            _LOCK_ENDPOINTS_NOTE_SUCCESSES,
            {"touched": sorted(touched), "succeeded": sorted({a.delivery.endpoint_id for a in delivered})},
        )
    unsuccessful = [(a, result) for a, result in zip(group, results, strict=True) if result != "delivered"]
    if unsuccessful:
        now = await database_now(conn)
        for attempted, result in unsuccessful:
            if result == "retrying":
                await _record_retry(conn, attempted, schedule=schedule, now=now)
            else:
                await _record_final_failure(conn, attempted, now=now)
    return results


def _unsuccessful_columns(attempted: Attempted) -> dict[str, object]:
    outcome = attempted.outcome
    return {
        "id": attempted.delivery.id,
        "attempt": attempted.delivery.attempt,
        "status": outcome.status,
        "body": _stored_text(outcome.body) if outcome.status is not None else None,
        "error": (outcome.error or "")[:MAX_ERROR_CHARS] or None,
    }


async def _record_retry(conn: Connection, attempted: Attempted, *, schedule: list[float], now: datetime) -> None:
    delay = schedule[attempted.delivery.attempt - 1]
    delay += random.uniform(0, delay / 10)
    await conn.execute(
        """UPDATE webhook_deliveries SET next_attempt_at = %(next)s, response_status = %(status)s,
                  response_body = %(body)s, last_error = %(error)s
           WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'pending'""",
        {**_unsuccessful_columns(attempted), "next": now + timedelta(seconds=delay)},
    )


async def _record_final_failure(conn: Connection, attempted: Attempted, *, now: datetime) -> None:
    await conn.execute(
        """UPDATE webhook_deliveries SET status = 'failed', response_status = %(status)s,
                  response_body = %(body)s, last_error = %(error)s
           WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'pending'""",
        _unsuccessful_columns(attempted),
    )
    await disable_if_persistently_failing(conn, attempted.delivery, now=now)


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
