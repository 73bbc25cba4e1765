"""GDPR erasure: remove everything personal about an address, keep only a keyed-hash suppression.

What holds personal data is listed in one place, :data:`PERSONAL_DATA`: each table with how erasure
reaches it (a statement run here, or ``ON DELETE CASCADE`` from ``leads``). A table added later with an
``email``/``email_normalized``/``email_hash``/``lead_id`` column (or a payload) must be added here;
``tests/integration/test_erasure.py`` fails until it is. Statements run in the order listed, in the
caller's transaction, before the leads themselves are deleted (they need the lead, enrollment and
message ids), with the parameters of :meth:`ErasureSubject.parameters`.

What stays: a ``suppressions`` row keyed by the HMAC of the normalized address (``SUPPRESSION_HASH_KEY``)
with reason ``erased`` and no detail, so the address is never mailed again and cannot be confirmed
from a dump. What was already published to Kafka is bounded by the topics' retention (docs/security.md).
Erasing twice, or erasing what never existed, is a no-op.

What is announced: a ``lead.erased`` per erased lead (its id only), queued in the outbox *after* the
scrub, in the same transaction, so it is published only if the erasure commits and the scrub (which
deletes outbox rows keyed by the lead's ids) does not take it. A lead id is a random UUID: once the
lead's rows are gone it names no one, and receivers of webhooks need it to erase their own copy. So
the announcement row is the one place the id stays in the database, until the outbox's retention
(``OUTBOX_RETENTION_HOURS``) purges it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from proto.messages import LeadErased
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.identity import email_hash, legacy_email_hash
from services.common.outbox import enqueue_messages

# The id of a lead's lead.erased message derives from the lead (a lead is erased once).
ERASED_NAMESPACE = uuid.UUID("0f6c2b7e-84d1-4a53-9e2f-6b1d3c8a5e47")


@dataclass(frozen=True)
class PersonalData:
    """One table that holds data about a person, and how erasure removes it."""

    table: str
    # The statement that erases (``%(name)s`` parameters of ErasureSubject.parameters); None when the
    # rows go by ON DELETE CASCADE from ``leads`` (a test checks that the cascade exists).
    erase: str | None
    why: str


PERSONAL_DATA: tuple[PersonalData, ...] = (
    PersonalData(
        "outbox",
        # Published rows too: they are kept OUTBOX_RETENTION_HOURS. Rows of our topics are found by key
        # (lead, enrollment, message id; an old unkeyed suppression hash), any other by the address in
        # its payload (case-insensitively; 'escape' reads any bytes as text, so no payload can fail it).
        # Unpublished ones are simply never published: their lead is gone.
        """DELETE FROM outbox
           WHERE key = ANY(%(outbox_keys)s)
              OR EXISTS (SELECT 1 FROM unnest(%(addresses)s::text[]) AS n(address)
                         WHERE strpos(lower(encode(payload, 'escape')),
                                      lower(encode(convert_to(n.address, 'UTF8'), 'escape'))) > 0)""",
        "payloads of lead.accepted, email.dispatch, email.event (SMTP texts, click URLs), dead letters",
    ),
    PersonalData(
        "suppressions",
        # The unkeyed row of before migration 0010 goes; the keyed row is written by erase_address.
        "DELETE FROM suppressions WHERE email_hash = %(legacy_hash)s AND NOT keyed",
        "an unkeyed SHA-256 of the address would confirm a guess; the detail may quote a diagnostic",
    ),
    PersonalData(
        "sequence_unsubscribes",
        # Sequences the address left: superseded by the global 'erased' suppression written below.
        "DELETE FROM sequence_unsubscribes WHERE email_hash IN (%(keyed_hash)s, %(legacy_hash)s)",
        "which Sequences the address left (by its hash; an unkeyed one would confirm a guess)",
    ),
    PersonalData(
        "lead_identities",
        "DELETE FROM lead_identities WHERE email_normalized = %(email_key)s",
        "the normalized address (also by cascade; this catches one left pointing elsewhere)",
    ),
    PersonalData("idempotency_keys", None, "which lead a request created"),
    PersonalData("confirmation_emails", None, "the double opt-in emails sent to the address, their SMTP replies"),
    PersonalData("events", None, "what happened to each message: SMTP texts, click targets"),
    PersonalData("messages", None, "SMTP replies and errors, dead letters"),
    PersonalData("enrollments", None, "which Sequences the person was in"),
    PersonalData("leads", "DELETE FROM leads WHERE id = ANY(%(lead_ids)s)", "the address, names, consent record"),
)


@dataclass(frozen=True)
class ErasureSubject:
    """Everything that identifies the person's rows: the address and the ids of what hangs off it."""

    email_key: str
    keyed_hash: str
    addresses: frozenset[str]
    lead_ids: list[uuid.UUID]
    enrollment_ids: list[uuid.UUID]
    message_ids: list[uuid.UUID]

    def parameters(self) -> dict[str, object]:
        legacy = legacy_email_hash(self.email_key)
        return {
            "email_key": self.email_key,
            "keyed_hash": self.keyed_hash,
            "lead_ids": self.lead_ids,
            "legacy_hash": legacy,
            "outbox_keys": [str(i) for i in (*self.lead_ids, *self.enrollment_ids, *self.message_ids)] + [legacy],
            "addresses": sorted(self.addresses),
        }


async def _subject(conn: Connection, email_key: str, hash_key: str) -> ErasureSubject:
    cursor = await conn.execute(
        "SELECT id, email FROM leads WHERE email_normalized = %s ORDER BY id FOR UPDATE", (email_key,)
    )
    leads = await cursor.fetchall()
    lead_ids = [row["id"] for row in leads]
    cursor = await conn.execute("SELECT id FROM enrollments WHERE lead_id = ANY(%s)", (lead_ids,))
    enrollment_ids = [row["id"] for row in await cursor.fetchall()]
    cursor = await conn.execute("SELECT id FROM messages WHERE lead_id = ANY(%s)", (lead_ids,))
    message_ids = [row["id"] for row in await cursor.fetchall()]
    return ErasureSubject(
        email_key=email_key,
        keyed_hash=email_hash(email_key, hash_key),
        addresses=frozenset({email_key, *(str(row["email"]) for row in leads)}),
        lead_ids=lead_ids,  # type: ignore[arg-type]
        enrollment_ids=enrollment_ids,  # type: ignore[arg-type]
        message_ids=message_ids,  # type: ignore[arg-type]
    )


async def erase_address(conn: Connection, email_key: str, *, hash_key: str, announce_topic: str) -> int:
    """Erase every lead of the normalized address ``email_key`` and everything :data:`PERSONAL_DATA`
    lists about it, then suppress it under its keyed hash and queue a ``lead.erased`` on
    ``announce_topic`` for each lead; returns leads erased."""
    subject = await _subject(conn, email_key, hash_key)
    parameters = subject.parameters()
    for holder in PERSONAL_DATA:
        if holder.erase is not None:
            await conn.execute(holder.erase.encode(), parameters)
    await conn.execute(
        """INSERT INTO suppressions (email_hash, reason, detail, keyed) VALUES (%s, 'erased', '', true)
           ON CONFLICT (email_hash) DO UPDATE SET reason = 'erased', detail = '', keyed = true""",
        (subject.keyed_hash,),
    )
    # After the scrub: it deletes outbox rows keyed by these lead ids, this announcement included.
    now = utcnow()
    await enqueue_messages(
        conn,
        [
            (
                announce_topic,
                str(lead_id),
                LeadErased(id=uuid.uuid5(ERASED_NAMESPACE, str(lead_id)), occurred_at=now, lead_id=lead_id),
            )
            for lead_id in subject.lead_ids
        ],
    )
    return len(subject.lead_ids)


async def erase_lead(conn: Connection, lead_id: uuid.UUID, *, hash_key: str, announce_topic: str) -> int:
    """Erase the person behind ``lead_id``: every lead of its address. Unknown ids erase nothing."""
    cursor = await conn.execute("SELECT email_normalized FROM leads WHERE id = %s FOR UPDATE", (lead_id,))
    row = await cursor.fetchone()
    if row is None:
        return 0
    return await erase_address(conn, str(row["email_normalized"]), hash_key=hash_key, announce_topic=announce_topic)
