"""A lead's timeline: everything that happened to it, oldest first, one page at a time.

Table-driven: :data:`TIMELINE_SOURCES` lists where entries come from, one SQL select each over
``%(lead_id)s`` yielding ``at`` (when), ``key`` (a stable tie-breaker), ``kind`` and ``properties``
(jsonb); a new kind of entry is one more source. Rows of ``events`` are named by :data:`EVENT_KINDS`;
an event type with no mapping still appears, as ``event.<type>``, with every column of its row as
properties (so an event kind or column another change adds shows up without touching this file).

Entries are ordered by (``at``, source, ``key``); the cursor is that triple of the last entry of a page,
so pagination is stable while new entries arrive (they sort after it, or are seen on a later page).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime

import msgspec

from proto.http import TimelineEntry
from services.common.db import Connection

# What an ``events`` row's ``type`` is called on the timeline. Unmapped types appear as ``event.<type>``.
EVENT_KINDS: dict[str, str] = {
    "sent": "step.sent",
    "failed": "step.failed",
    "dead": "step.dead",
    "skipped": "step.skipped",
    "replayed": "step.replayed",
    "opened": "email.opened",
    "clicked": "email.clicked",
    "unsubscribed": "email.unsubscribed",
    "bounced": "email.bounced",
    "complained": "email.complained",
}


@dataclass(frozen=True)
class TimelineSource:
    """One place entries come from: a select of ``at, key, kind, properties`` for ``%(lead_id)s``."""

    name: str
    select: str


# Append new sources at the end: a source's index is part of the cursor and orders simultaneous entries.
TIMELINE_SOURCES: tuple[TimelineSource, ...] = (
    TimelineSource(
        "accepted",
        # Duplicates of the lead within the window (answered with this lead's id) are folded in: counted.
        """SELECT l.created_at AS at, l.id::text AS key, 'lead.accepted' AS kind,
                  jsonb_build_object(
                      'source', l.source, 'tags', to_jsonb(l.tags), 'client_id', l.client_id,
                      'request_id', l.request_id,
                      'duplicates', l.duplicate_count, 'last_duplicate_at', l.last_duplicate_at) AS properties
           FROM leads l WHERE l.id = %(lead_id)s""",
    ),
    TimelineSource(
        "consent",
        """SELECT l.consent_recorded_at AS at, l.id::text AS key, 'consent.recorded' AS kind,
                  jsonb_build_object(
                      'marketing', l.consent_marketing, 'text', l.consent_text,
                      'captured_at', l.consent_captured_at, 'ip', host(l.consent_ip),
                      'user_agent', l.consent_user_agent) AS properties
           FROM leads l WHERE l.id = %(lead_id)s""",
    ),
    TimelineSource(
        "enrollment",
        """SELECT e.created_at AS at, e.id::text AS key, 'enrollment.started' AS kind,
                  jsonb_build_object('enrollment_id', e.id, 'sequence', s.namespace || '/' || s.name,
                                     'revision', e.revision) AS properties
           FROM enrollments e JOIN sequences s ON s.id = e.sequence_id WHERE e.lead_id = %(lead_id)s""",
    ),
    TimelineSource(
        "exit",
        """SELECT e.updated_at AS at, e.id::text AS key,
                  CASE e.status WHEN 'completed' THEN 'enrollment.completed' ELSE 'enrollment.exited' END AS kind,
                  jsonb_build_object('enrollment_id', e.id, 'sequence', s.namespace || '/' || s.name,
                                     'status', e.status) AS properties
           FROM enrollments e JOIN sequences s ON s.id = e.sequence_id
           WHERE e.lead_id = %(lead_id)s AND e.status <> 'active'""",
    ),
    TimelineSource(
        "events",
        # Every column of the row (a variant or properties column added later included), named.
        """SELECT ev.occurred_at AS at, lpad(ev.id::text, 20, '0') AS key, 'event:' || ev.type AS kind,
                  jsonb_strip_nulls(
                      (to_jsonb(ev) - 'id' - 'lead_id' - 'occurred_at' - 'dedupe_key' - 'type')
                      || jsonb_build_object('sequence', s.namespace || '/' || s.name, 'step', st.name)
                  ) AS properties
           FROM events ev
           LEFT JOIN sequences s ON s.id = ev.sequence_id
           LEFT JOIN sequence_steps st
             ON st.sequence_id = ev.sequence_id AND st.revision = ev.revision AND st.position = ev.step_position
           WHERE ev.lead_id = %(lead_id)s""",
    ),
    TimelineSource(
        "suppression",
        """SELECT x.created_at AS at, x.email_hash AS key, 'suppression.added' AS kind,
                  jsonb_build_object('reason', x.reason, 'detail', x.detail) AS properties
           FROM leads l JOIN suppressions x
             ON x.email_hash = l.email_hash
             OR (x.email_hash = encode(sha256(convert_to(l.email_normalized, 'UTF8')), 'hex') AND NOT x.keyed)
           WHERE l.id = %(lead_id)s""",
    ),
    TimelineSource(
        "sequence_left",
        """SELECT u.created_at AS at, u.sequence_id::text AS key, 'sequence.left' AS kind,
                  jsonb_build_object('sequence', s.namespace || '/' || s.name, 'detail', u.detail) AS properties
           FROM leads l
           JOIN sequence_unsubscribes u ON u.email_hash = l.email_hash
           JOIN sequences s ON s.id = u.sequence_id
           WHERE l.id = %(lead_id)s""",
    ),
    TimelineSource(
        "confirmation_email",
        """SELECT c.queued_at AS at, c.id::text AS key, 'confirmation.requested' AS kind,
                  jsonb_build_object('status', c.status, 'sent_at', c.sent_at, 'detail', c.detail) AS properties
           FROM confirmation_emails c WHERE c.lead_id = %(lead_id)s""",
    ),
    TimelineSource(
        "confirmed",
        """SELECT l.confirmed_at AS at, l.id::text AS key, 'consent.confirmed' AS kind,
                  jsonb_build_object('ip', host(l.confirmed_ip), 'user_agent', l.confirmed_user_agent) AS properties
           FROM leads l WHERE l.id = %(lead_id)s AND l.confirmed_at IS NOT NULL""",
    ),
)

_UNION = "\nUNION ALL\n".join(
    f"SELECT at, {n} AS source, key, kind, properties FROM ({source.select}) AS s{n}"  # noqa: S608 - constants
    for n, source in enumerate(TIMELINE_SOURCES)
)
_PAGE = f"""SELECT at, source, key, kind, properties FROM ({_UNION}) AS timeline
            WHERE (at, source, key) > (%(after_at)s::timestamptz, %(after_source)s::int, %(after_key)s::text)
            ORDER BY at, source, key
            LIMIT %(limit)s"""  # noqa: S608 - constant fragments only


class InvalidCursor(ValueError):
    """A cursor this service did not issue (or that was altered)."""


class _Cursor(msgspec.Struct, array_like=True, frozen=True):
    at: datetime
    source: int
    key: str


def _encode_cursor(cursor: _Cursor) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(cursor)).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, int, str]:
    """The position a cursor names; ``InvalidCursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = msgspec.json.decode(raw, type=_Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCursor("is not a cursor from a previous page") from None
    if cursor.at.tzinfo is None:
        raise InvalidCursor("is not a cursor from a previous page")
    return cursor.at, cursor.source, cursor.key


def entry_kind(kind: str) -> str:
    """The timeline's name of a row's kind (``event:<type>`` rows through :data:`EVENT_KINDS`)."""
    if kind.startswith("event:"):
        event_type = kind.removeprefix("event:")
        return EVENT_KINDS.get(event_type, f"event.{event_type}")
    return kind


async def lead_exists(conn: Connection, lead_id: uuid.UUID) -> bool:
    cursor = await conn.execute("SELECT 1 FROM leads WHERE id = %s", (lead_id,))
    return await cursor.fetchone() is not None


async def timeline_page(
    conn: Connection, lead_id: uuid.UUID, *, limit: int, cursor: str | None = None
) -> tuple[list[TimelineEntry], str | None]:
    """Up to ``limit`` entries after ``cursor`` (from the start without one), and the cursor of the next
    page (None when this is the last). ``InvalidCursor`` for a cursor that was not issued here."""
    after: tuple[datetime | str, int, str] = ("-infinity", -1, "")
    if cursor:
        after = decode_cursor(cursor)
    rows = await (
        await conn.execute(
            _PAGE.encode(),
            {
                "lead_id": lead_id,
                "after_at": after[0],
                "after_source": after[1],
                "after_key": after[2],
                "limit": limit + 1,
            },
        )
    ).fetchall()
    entries = [
        TimelineEntry(
            at=row["at"],  # type: ignore[arg-type]
            kind=entry_kind(str(row["kind"])),
            properties={k: v for k, v in dict(row["properties"]).items() if v is not None},  # type: ignore[call-overload]
        )
        for row in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = _encode_cursor(_Cursor(last["at"], int(last["source"]), str(last["key"])))  # type: ignore[arg-type, call-overload]
    return entries, next_cursor


async def full_timeline(conn: Connection, lead_id: uuid.UUID, *, page_size: int = 500) -> list[TimelineEntry]:
    """Every entry of the lead's timeline (for the export)."""
    entries: list[TimelineEntry] = []
    cursor: str | None = None
    while True:
        page, cursor = await timeline_page(conn, lead_id, limit=page_size, cursor=cursor)
        entries.extend(page)
        if cursor is None:
            return entries
