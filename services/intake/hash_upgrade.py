"""Replacing unkeyed address hashes (before migration 0010) with keyed ones, from addresses still held.

A lead still holds its address, so its hash can be recomputed under ``SUPPRESSION_HASH_KEY``; an old
suppression (or Sequence unsubscribe) whose address has a lead is rewritten to the keyed hash at the
same time (it keeps its reason, detail and date). Suppressions of addresses without a lead cannot be
rehashed (their address is gone, which is the point); they stay ``keyed = false`` and are matched by
the unkeyed hash of a lead's address computed on the spot
(``services.common.suppressions.LEAD_IS_SUPPRESSED_SQL``) until an erasure of that address replaces
them. Intake runs this at start-up and every minute (a lead written by a previous release during a
rolling upgrade is also unkeyed); it is idempotent and safe across replicas.
"""

from __future__ import annotations

import asyncio
import logging

from services.common.db import UNAVAILABLE_ERRORS, Connection, Pool, transaction
from services.common.identity import email_hash, legacy_email_hash

log = logging.getLogger(__name__)

# Short: a lead written by the previous release during a rolling upgrade is unkeyed until the next round,
# and until then a keyed suppression written meanwhile does not match it. An idle round is one index probe.
REHASH_INTERVAL_S = 60.0


async def rehash_batch(pool: Pool, hash_key: str, *, limit: int = 500) -> int:
    """Rehash at most ``limit`` leads with an unkeyed hash (and their old suppressions); returns how many."""
    async with transaction(pool) as conn:
        cursor = await conn.execute(
            """SELECT id, email_normalized FROM leads WHERE NOT email_hash_keyed
               ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED""",
            (limit,),
        )
        rows = await cursor.fetchall()
        if not rows:
            return 0
        ids = [row["id"] for row in rows]
        keys = [str(row["email_normalized"]) for row in rows]
        keyed = [email_hash(key, hash_key) for key in keys]
        legacy = [legacy_email_hash(key) for key in keys]
        await conn.execute(
            """UPDATE leads l SET email_hash = n.keyed, email_hash_keyed = true
               FROM unnest(%s::uuid[], %s::text[]) AS n(id, keyed) WHERE l.id = n.id""",
            (ids, keyed),
        )
        await conn.execute(
            """WITH old AS (
                   DELETE FROM suppressions x USING unnest(%s::text[], %s::text[]) AS n(legacy, keyed)
                   WHERE x.email_hash = n.legacy AND NOT x.keyed
                   RETURNING n.keyed, x.reason, x.detail, x.created_at)
               INSERT INTO suppressions (email_hash, reason, detail, created_at, keyed)
               SELECT DISTINCT ON (keyed) keyed, reason, detail, created_at, true FROM old
               ON CONFLICT (email_hash) DO NOTHING""",
            (legacy, keyed),
        )
        await conn.execute(
            """WITH old AS (
                   DELETE FROM sequence_unsubscribes u USING unnest(%s::text[], %s::text[]) AS n(legacy, keyed)
                   WHERE u.email_hash = n.legacy
                   RETURNING n.keyed, u.sequence_id, u.detail, u.created_at)
               INSERT INTO sequence_unsubscribes (email_hash, sequence_id, detail, created_at)
               SELECT keyed, sequence_id, detail, created_at FROM old
               ON CONFLICT (email_hash, sequence_id) DO NOTHING""",
            (legacy, keyed),
        )
        return len(rows)


async def rekey_address(conn: Connection, email_key: str, hash_key: str) -> None:
    """Give every lead of one address its keyed hash now, in the caller's transaction: called where
    intake suppresses an address it knows, so the suppression it writes (keyed) matches that address's
    leads at once, not only after the next round of :func:`keep_hashes_keyed`."""
    await conn.execute(
        """UPDATE leads SET email_hash = %s, email_hash_keyed = true
           WHERE email_normalized = %s AND NOT email_hash_keyed""",
        (email_hash(email_key, hash_key), email_key),
    )


async def rehash_all(pool: Pool, hash_key: str, *, limit: int = 500) -> int:
    """Rehash every lead with an unkeyed hash, in batches (short transactions); returns how many."""
    total = 0
    while True:
        done = await rehash_batch(pool, hash_key, limit=limit)
        total += done
        if done < limit:
            return total


async def keep_hashes_keyed(pool: Pool, hash_key: str, *, interval_s: float = REHASH_INTERVAL_S) -> None:
    """Run :func:`rehash_all` now and every ``interval_s``, until cancelled; a database outage only
    postpones it to the next round."""
    while True:
        try:
            rehashed = await rehash_all(pool, hash_key)
            if rehashed:
                log.info("rehashed unkeyed address hashes", extra={"leads": rehashed})
        except UNAVAILABLE_ERRORS as error:
            log.warning("rehash of address hashes postponed", extra={"error": str(error)})
        except Exception:  # a bug must not end intake's requests; it is logged and retried next round
            log.exception("rehash of address hashes failed")
        await asyncio.sleep(interval_s)
