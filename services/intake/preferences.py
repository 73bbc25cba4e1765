"""A subscriber's preferences behind an unsubscribe link: plain functions over a connection.

The signed unsubscribe token names a message; the message names the address (by its lead). An address
is enrolled in Sequences through every lead that carries it, so the preferences are read and applied
per address hash, never per lead. Leaving one Sequence is a suppression scoped to it
(``sequence_unsubscribes``): the address's enrollments in it end now, the scheduler enrolls the address
there no more, and the dispatcher skips a step of it that was already queued. Leaving everything is the
global suppression one-click unsubscribe always was (:func:`services.intake.engagement.unsubscribe`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from services.common import metrics
from services.common.db import Connection
from services.common.enrollment_events import ENROLLMENT_COLUMNS, EnrollmentRef, announce_ended
from services.common.events import find_message, record_event
from services.common.identity import email_hash as keyed_email_hash
from services.common.suppressions import LEAD_IS_SUPPRESSED_SQL
from services.intake.engagement import unsubscribe
from services.intake.hash_upgrade import rekey_address

UnsubscribeScope = Literal["Global", "Sequence"]


@dataclass(frozen=True)
class Subscription:
    """A Sequence the address is enrolled in (an active enrollment of any of its leads)."""

    sequence_id: uuid.UUID
    display_name: str


@dataclass(frozen=True)
class Preferences:
    """What the preference page shows: who (masked), in what language, and the Sequences still running."""

    masked_address: str
    first_name: str | None
    locale: str | None
    suppressed: bool
    subscriptions: list[Subscription]


def mask_address(address: str) -> str:
    """``ann@example.com`` → ``a***@example.com``: enough to recognise one's own address on a page
    that anyone holding the link can open, not enough to learn it."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


async def _recipient(conn: Connection, message_id: uuid.UUID) -> dict[str, object] | None:
    cursor = await conn.execute(
        f"""SELECT l.email, l.email_normalized, l.email_hash, l.first_name, l.locale, m.sequence_id,
                  r.unsubscribe_scope,
                  {LEAD_IS_SUPPRESSED_SQL} AS suppressed
           FROM messages m
           JOIN leads l ON l.id = m.lead_id
           JOIN sequence_revisions r ON r.sequence_id = m.sequence_id AND r.revision = m.revision
           WHERE m.id = %s""",  # noqa: S608 - a constant fragment, no input
        (message_id,),
    )
    return await cursor.fetchone()


async def _subscriptions(conn: Connection, email_hash: str) -> list[Subscription]:
    cursor = await conn.execute(
        """SELECT DISTINCT s.id, COALESCE(r.display_name, s.name) AS display_name, s.namespace, s.name
           FROM leads l
           JOIN enrollments e ON e.lead_id = l.id AND e.status = 'active'
           JOIN sequences s ON s.id = e.sequence_id AND s.deleted_at IS NULL
           JOIN sequence_revisions r ON r.sequence_id = s.id AND r.revision = s.current_revision
           WHERE l.email_hash = %s
           ORDER BY display_name, s.namespace, s.name""",
        (email_hash,),
    )
    return [
        Subscription(row["id"], row["display_name"])  # type: ignore[arg-type]
        for row in await cursor.fetchall()
    ]


async def load_preferences(conn: Connection, message_id: uuid.UUID) -> Preferences | None:
    """The preferences of the message's recipient; None when the message no longer exists (erased)."""
    recipient = await _recipient(conn, message_id)
    if recipient is None:
        return None
    email_hash = str(recipient["email_hash"])
    return Preferences(
        masked_address=mask_address(str(recipient["email"])),
        first_name=recipient["first_name"],  # type: ignore[arg-type]
        locale=recipient["locale"],  # type: ignore[arg-type]
        suppressed=bool(recipient["suppressed"]),
        subscriptions=[] if recipient["suppressed"] else await _subscriptions(conn, email_hash),
    )


async def leave_sequence(
    conn: Connection, email_hash: str, sequence_id: uuid.UUID, *, detail: str, lifecycle_topic: str
) -> int:
    """The address leaves one Sequence: recorded (idempotent) and its active enrollments there cancelled
    in the caller's transaction, each announced on ``lifecycle_topic`` as exited (``unsubscribed``);
    returns how many enrollments ended. Other Sequences are untouched."""
    await conn.execute(
        """INSERT INTO sequence_unsubscribes (email_hash, sequence_id, detail) VALUES (%s, %s, %s)
           ON CONFLICT (email_hash, sequence_id) DO NOTHING""",
        (email_hash, sequence_id, detail[:500]),
    )
    cursor = await conn.execute(
        """UPDATE enrollments e
           SET status = 'cancelled', next_run_at = NULL, updated_at = now()
           FROM leads l
           WHERE l.email_hash = %s AND e.lead_id = l.id AND e.sequence_id = %s AND e.status = 'active'
           RETURNING """  # noqa: S608 - a constant column list, no input
        + ENROLLMENT_COLUMNS,
        (email_hash, sequence_id),
    )
    ended = [EnrollmentRef.of(row) for row in await cursor.fetchall()]
    await announce_ended(conn, lifecycle_topic, ended, outcome="exited", reason="unsubscribed")
    return len(ended)


async def _keyed_hash_of(conn: Connection, recipient: dict[str, object], topics: Topics) -> str:
    """The recipient's keyed address hash, its leads rehashed to it first (a lead written by an earlier
    release may still carry the unkeyed one), so what is recorded under it matches every lead."""
    email_key = str(recipient["email_normalized"])
    await rekey_address(conn, email_key, topics.hash_key)
    return keyed_email_hash(email_key, topics.hash_key)


@dataclass(frozen=True)
class Topics:
    """Where the announcements of an unsubscribe go, and the key of the address hash they carry."""

    events: str
    suppressed: str
    hash_key: str  # SUPPRESSION_HASH_KEY
    lifecycle: str  # enrollment.ended of an enrollment left


async def _leave_and_record(
    conn: Connection, message_id: uuid.UUID, email_hash: str, sequence_id: uuid.UUID, topics: Topics
) -> None:
    await leave_sequence(
        conn, email_hash, sequence_id, detail=f"link in message {message_id}", lifecycle_topic=topics.lifecycle
    )
    found = await find_message(conn, message_id)
    if found is not None and found[0].sequence_id == sequence_id:
        # The message whose link was used belongs to this Sequence: its stats count the unsubscribe.
        await record_event(conn, found[0], "unsubscribed", topic=topics.events, dedupe_key=f"{message_id}/unsubscribed")
    metrics.TRACKING.labels("unsubscribed", "recorded").inc()


async def one_click_unsubscribe(conn: Connection, message_id: uuid.UUID, topics: Topics) -> UnsubscribeScope | None:
    """RFC 8058 one-click (and the page's plain "unsubscribe"): by the scope of the message's Sequence,
    the address is suppressed everywhere (``Global``) or leaves that Sequence only (``Sequence``).
    Idempotent; returns the scope applied, None when the message no longer exists."""
    recipient = await _recipient(conn, message_id)
    if recipient is None:
        return None
    if recipient["unsubscribe_scope"] == "Sequence":
        await _leave_and_record(
            conn,
            message_id,
            await _keyed_hash_of(conn, recipient, topics),
            recipient["sequence_id"],  # type: ignore[arg-type]
            topics,
        )
        return "Sequence"
    await unsubscribe(
        conn, message_id, events_topic=topics.events, suppressed_topic=topics.suppressed, hash_key=topics.hash_key
    )
    return "Global"


async def apply_preferences(
    conn: Connection, message_id: uuid.UUID, *, keep: set[uuid.UUID], everything: bool, topics: Topics
) -> Preferences | None:
    """Apply the page's choice: ``everything`` suppresses the address (as one-click with ``Global`` scope
    does); otherwise the address leaves each Sequence it is enrolled in that ``keep`` does not name, and
    stays in the rest. Ids in ``keep`` that are not among its Sequences change nothing. Returns the
    preferences as they now are; None when the message no longer exists."""
    recipient = await _recipient(conn, message_id)
    if recipient is None:
        return None
    if everything:
        await unsubscribe(
            conn, message_id, events_topic=topics.events, suppressed_topic=topics.suppressed, hash_key=topics.hash_key
        )
    else:
        email_hash = await _keyed_hash_of(conn, recipient, topics)
        for subscription in await _subscriptions(conn, email_hash):
            if subscription.sequence_id not in keep:
                await _leave_and_record(conn, message_id, email_hash, subscription.sequence_id, topics)
    return await load_preferences(conn, message_id)
