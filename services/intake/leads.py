"""Accepting a lead: one transaction that claims the duplicate window, stores the lead with its consent
record and queues ``lead.accepted`` in the outbox — or, for a lead that must confirm first (double
opt-in, ``services.intake.double_opt_in``), its confirmation email instead."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import msgspec
import psycopg_pool
from psycopg.types.json import Jsonb

from proto.http import LeadReceipt, LeadSubmission
from proto.messages import LeadAccepted
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.identity import email_hash
from services.common.outbox import enqueue_message
from services.intake.batching import GroupCommitter, Rejected
from services.intake.double_opt_in import ConfirmationRules, request_confirmation, resend_confirmation_if_cooled_down
from services.intake.idempotency import IdempotencyKey, IdempotencyKeyReused, claim_idempotency_key, remember_receipt


@dataclass(frozen=True)
class Submitter:
    """Who sent the lead, as intake saw it: recorded in the consent ledger and carried in the outbox."""

    client_id: uuid.UUID | None = None
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


async def submit_lead(
    conn: Connection,
    lead: LeadSubmission,
    email_key: str,
    submitter: Submitter,
    *,
    duplicate_window: timedelta,
    topic: str,
    idempotency: IdempotencyKey | None = None,
    idempotency_ttl: timedelta = timedelta(hours=24),
    must_confirm: bool = False,
    confirmation: ConfirmationRules | None = None,
    hash_key: str | None = None,
) -> LeadReceipt:
    """Accept ``lead`` once per Idempotency-Key: a retry with the same key gets the first receipt.

    Runs inside the caller's transaction; raises ``IdempotencyKeyReused`` for a key reused with
    another body (nothing is changed then).
    """
    if idempotency is not None:
        earlier = await claim_idempotency_key(conn, idempotency, idempotency_ttl)
        if earlier is not None:
            return earlier
    receipt = await accept_lead(
        conn,
        lead,
        email_key,
        submitter,
        duplicate_window=duplicate_window,
        topic=topic,
        must_confirm=must_confirm,
        confirmation=confirmation,
        hash_key=hash_key,
    )
    if idempotency is not None:
        await remember_receipt(conn, idempotency, receipt)
    return receipt


async def accept_lead(
    conn: Connection,
    lead: LeadSubmission,
    email_key: str,
    submitter: Submitter = Submitter(),
    *,
    duplicate_window: timedelta,
    topic: str,
    must_confirm: bool = False,
    confirmation: ConfirmationRules | None = None,
    hash_key: str | None = None,
) -> LeadReceipt:
    """Store ``lead`` unless the same address was accepted within ``duplicate_window``.

    With ``confirmation`` (double opt-in on), a lead that ``must_confirm`` is stored without
    ``lead.accepted`` and gets its confirmation email instead (so does a lead that a double opt-in
    Sequence matches, which still enrolls into the others at once); a duplicate of a lead still waiting
    for its confirmation gets another email once the cool-down has passed.

    ``hash_key`` (``SUPPRESSION_HASH_KEY``) keys the stored address hash; without it the database
    fills an unkeyed one that intake's rehash replaces later (``services.intake.hash_upgrade``).

    Runs inside the caller's transaction. Concurrency-safe: simultaneous submissions of one address
    serialize on its ``lead_identities`` row, so exactly one creates a lead and the others get its id.
    """
    lead_id = uuid.uuid4()
    cursor = await conn.execute(
        """INSERT INTO lead_identities AS li (email_normalized, lead_id, accepted_at)
           VALUES (%(key)s, %(lead_id)s, now())
           ON CONFLICT (email_normalized) DO UPDATE
               SET lead_id = EXCLUDED.lead_id, accepted_at = EXCLUDED.accepted_at
               WHERE li.accepted_at <= now() - %(window)s
           RETURNING lead_id""",
        {"key": email_key, "lead_id": lead_id, "window": duplicate_window},
    )
    if await cursor.fetchone() is None:
        cursor = await conn.execute("SELECT lead_id FROM lead_identities WHERE email_normalized = %s", (email_key,))
        row = await cursor.fetchone()
        assert row is not None, "the conflicting identity row exists: it blocked our insert"
        existing: uuid.UUID = row["lead_id"]  # type: ignore[assignment]
        # Counted for the lead's timeline (the submission itself is not stored: it may differ in nothing
        # but its timing, and storing each would let anyone grow the table).
        await conn.execute(
            "UPDATE leads SET duplicate_count = duplicate_count + 1, last_duplicate_at = now() WHERE id = %s",
            (existing,),
        )
        if confirmation is not None:
            await resend_confirmation_if_cooled_down(conn, existing, rules=confirmation)
        return LeadReceipt(id=existing, duplicate=True)

    await conn.execute(
        """INSERT INTO leads (id, email, email_normalized, first_name, last_name, phone, source, tags, utm,
                              locale, timezone, metadata, consent_marketing, consent_text, consent_captured_at,
                              consent_ip, consent_user_agent, client_id, request_id, email_hash, email_hash_keyed)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            lead_id,
            lead.email,
            email_key,
            lead.first_name,
            lead.last_name,
            lead.phone,
            lead.source,
            lead.tags,
            Jsonb(msgspec.to_builtins(lead.utm)),
            lead.locale,
            lead.timezone,
            Jsonb(lead.metadata),
            lead.consent.marketing,
            lead.consent.text,
            lead.consent.captured_at,
            submitter.ip,
            submitter.user_agent,
            submitter.client_id,
            submitter.request_id,
            email_hash(email_key, hash_key) if hash_key else None,
            hash_key is not None,
        ),
    )
    if confirmation is not None:
        await request_confirmation(conn, lead_id, required=must_confirm, rules=confirmation)
        if must_confirm:
            return LeadReceipt(id=lead_id, duplicate=False)  # enrolls once confirmed (confirm_lead)
    message = LeadAccepted(
        id=lead_id,
        occurred_at=utcnow(),
        lead_id=lead_id,
        source=lead.source,
        tags=lead.tags,
        request_id=submitter.request_id,
    )
    await enqueue_message(conn, topic, str(lead_id), message)
    return LeadReceipt(id=lead_id, duplicate=False)


@dataclass(frozen=True)
class LeadJob:
    """One validated submission waiting for its transaction."""

    lead: LeadSubmission
    email_key: str
    submitter: Submitter
    idempotency: IdempotencyKey | None = None
    # Double opt-in: this lead enrolls only once it has confirmed its address.
    must_confirm: bool = False


def lead_committer(
    pool: psycopg_pool.AsyncConnectionPool[Connection],
    *,
    duplicate_window: timedelta,
    topic: str,
    idempotency_ttl: timedelta,
    max_batch_size: int,
    max_concurrent_batches: int,
    confirmation: ConfirmationRules | None = None,
    hash_key: str | None = None,
) -> GroupCommitter[LeadJob, LeadReceipt]:
    """Accepts leads with group commit: ``await committer.submit(job, job.email_key)`` answers once the
    lead (or its duplicate verdict) is committed; ``IdempotencyKeyReused`` reaches only its submitter.
    ``confirmation`` None turns double opt-in off entirely (no Sequence can ask for it then either)."""

    async def work(conn: Connection, job: LeadJob) -> LeadReceipt:
        try:
            return await submit_lead(
                conn,
                job.lead,
                job.email_key,
                job.submitter,
                duplicate_window=duplicate_window,
                topic=topic,
                idempotency=job.idempotency,
                idempotency_ttl=idempotency_ttl,
                must_confirm=job.must_confirm,
                confirmation=confirmation,
                hash_key=hash_key,
            )
        except IdempotencyKeyReused as error:
            # Raised before this job wrote anything: the batch's transaction stays usable.
            raise Rejected(error) from error

    return GroupCommitter(pool, work, max_size=max_batch_size, max_concurrent=max_concurrent_batches)
