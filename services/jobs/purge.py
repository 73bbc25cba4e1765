"""``healingwork job purge``: retention. Deletes, each past its configured age:

* ``events`` (``EVENTS_RETENTION_DAYS``; the daily rollups already computed from them stay),
* published ``outbox`` rows (``OUTBOX_RETENTION_HOURS``; unpublished rows are never deleted),
* ``idempotency_keys`` older than ``IDEMPOTENCY_TTL_HOURS`` (intake no longer honours them),
* expired duplicate-window entries in ``lead_identities`` (older than ``DUPLICATE_WINDOW_HOURS``;
  intake treats them as free already, so deleting them changes no answer),
* leads that had to confirm their address (double opt-in) and did not within
  ``CONFIRMATION_EXPIRY_HOURS``: their links already answer "expired"; the lead, its identity row and
  its confirmation emails go (by foreign-key cascade).

Each delete takes at most ``PURGE_BATCH_SIZE`` rows, locked with SKIP LOCKED, in its own short
transaction: no long lock, no long snapshot holding back vacuum, no fight with live traffic.
"""

from __future__ import annotations

from datetime import timedelta

from services.common.db import Connection
from services.jobs.runner import JobContext, in_batches

# Each is served by an index on its age column: events_occurred_at_idx, outbox_published_at_idx,
# lead_identities_accepted_at_idx, idempotency_keys_created_at_idx.
PURGE_EVENTS = """DELETE FROM events WHERE id IN (
    SELECT id FROM events WHERE occurred_at < now() - %(age)s LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"""
PURGE_OUTBOX = """DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox WHERE published_at < now() - %(age)s LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"""
# FOR UPDATE re-checks the age after waiting: an identity that intake refreshed meanwhile stays.
PURGE_LEAD_IDENTITIES = """DELETE FROM lead_identities WHERE email_normalized IN (
    SELECT email_normalized FROM lead_identities WHERE accepted_at < now() - %(age)s
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"""
# Served by leads_unconfirmed_idx (created_at) WHERE confirmation_required AND confirmed_at IS NULL;
# FOR UPDATE re-checks after waiting, so a lead confirmed meanwhile stays.
PURGE_UNCONFIRMED_LEADS = """DELETE FROM leads WHERE id IN (
    SELECT id FROM leads WHERE confirmation_required AND confirmed_at IS NULL AND created_at < now() - %(age)s
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"""
PURGE_IDEMPOTENCY_KEYS = """DELETE FROM idempotency_keys WHERE ctid IN (
    SELECT ctid FROM idempotency_keys WHERE created_at < now() - %(age)s LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"""


async def purge_batch(conn: Connection, query: str, *, older_than: timedelta, limit: int) -> int:
    """Delete at most ``limit`` rows with ``query``; returns how many were deleted."""
    cursor = await conn.execute(query.encode(), {"age": older_than, "limit": limit})
    return cursor.rowcount


async def purge(ctx: JobContext, *, batch_size: int | None = None) -> dict[str, int]:
    """The job: every retention in bounded batches; returns the rows deleted per table."""
    settings = ctx.settings
    size = batch_size or settings.purge_batch_size
    plan = {
        "events": (PURGE_EVENTS, timedelta(days=settings.events_retention_days)),
        "outbox": (PURGE_OUTBOX, timedelta(hours=settings.outbox_retention_hours)),
        "lead_identities": (PURGE_LEAD_IDENTITIES, timedelta(hours=settings.duplicate_window_hours)),
        "idempotency_keys": (PURGE_IDEMPOTENCY_KEYS, timedelta(hours=settings.idempotency_ttl_hours)),
        "unconfirmed_leads": (PURGE_UNCONFIRMED_LEADS, timedelta(hours=settings.confirmation_expiry_hours)),
    }
    deleted: dict[str, int] = {}
    for table, (query, age) in plan.items():

        async def step(conn: Connection, query: str = query, age: timedelta = age) -> int:
            return await purge_batch(conn, query, older_than=age, limit=size)

        deleted[table] = sum(await in_batches(ctx.pool, step, size))
    return deleted
