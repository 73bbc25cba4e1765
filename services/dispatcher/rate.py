"""A send rate (messages per second) that holds across every dispatcher replica.

The bucket lives in PostgreSQL (``send_rate_buckets``, one row per transport): a replica leases a few
tokens at a time in one UPDATE, which refills the bucket from the time elapsed and grants at most what
it holds. Row locking serializes concurrent leases, so the sum over replicas never exceeds the rate
(plus one second of burst). Leasing in small chunks keeps the database out of the per-message path;
tokens a replica leased and did not use (it stopped) are simply lost, which errs on the slow side.
"""

from __future__ import annotations

import asyncio
import time

import psycopg_pool

from services.common import metrics
from services.common.db import Connection, transaction

# A lease covers about this much of a second's rate, so each replica asks a few times per second.
LEASE_FRACTION_S = 0.1


async def lease_send_tokens(conn: Connection, name: str, *, rate_per_s: float, wanted: int) -> int:
    """Take up to ``wanted`` tokens from the shared bucket ``name``; returns how many were granted."""
    burst = max(1.0, rate_per_s)
    await conn.execute(
        """INSERT INTO send_rate_buckets (name, tokens) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING""",
        (name, burst),
    )
    cursor = await conn.execute(
        """WITH refill AS (
               SELECT least(%(burst)s, tokens + %(rate)s * extract(epoch FROM clock_timestamp() - updated_at))
                      AS available
               FROM send_rate_buckets WHERE name = %(name)s FOR UPDATE)
           UPDATE send_rate_buckets b
           SET tokens = r.available - least(%(wanted)s, greatest(floor(r.available), 0)),
               updated_at = clock_timestamp()
           FROM refill r
           WHERE b.name = %(name)s
           RETURNING least(%(wanted)s, greatest(floor(r.available), 0))::integer AS granted""",
        {"name": name, "rate": rate_per_s, "burst": burst, "wanted": wanted},
    )
    row = await cursor.fetchone()
    return int(row["granted"]) if row else 0  # type: ignore[call-overload]


class SharedRateLimiter:
    """Hands out send permits at ``rate_per_s`` summed over all replicas sharing ``name``; 0 means unlimited."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Connection], name: str, rate_per_s: float) -> None:
        self._pool = pool
        self._name = name
        self._rate = rate_per_s
        self._tokens = 0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for one permit."""
        if self._rate <= 0:
            return
        async with self._lock:
            started = time.monotonic()
            while self._tokens == 0:
                wanted = max(1, int(self._rate * LEASE_FRACTION_S))
                async with transaction(self._pool) as conn:
                    self._tokens = await lease_send_tokens(conn, self._name, rate_per_s=self._rate, wanted=wanted)
                if self._tokens == 0:
                    await asyncio.sleep(max(1.0 / self._rate, 0.005))
            self._tokens -= 1
            metrics.SEND_RATE_WAIT_SECONDS.inc(time.monotonic() - started)
