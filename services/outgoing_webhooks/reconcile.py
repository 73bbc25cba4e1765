"""The backstop of the fan-out: events are found again in PostgreSQL, not only in Kafka.

The consumer fans out what Kafka hands it; a broker that loses its data (Tansu's memory storage on a
restart, a cluster rebuilt) would take events that were published but not yet consumed with it. Every
such event is still an outbox row (kept ``OUTBOX_RETENTION_HOURS``, published or not), holding the
exact message with its id, so this pass decodes the source topics' rows published in a window and fans
them out again. The fan-out is idempotent on (endpoint, event id), so an event seen by both paths makes
one delivery with one ``webhook-id``; only endpoints registered before an event occurred get it here.

The window is by ``published_at`` (served by ``outbox_published_at_idx``) and overlaps the previous one:
a relay stamps ``published_at`` when its pass starts and commits after the broker acknowledged, so a row
can appear with a time a little in the past.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from proto.codec import decode_message
from services.common.db import Connection
from services.common.webhook_events import webhook_event_of
from services.outgoing_webhooks.fanout import fan_out

# How far back each pass looks again before the previous pass's end.
OVERLAP = timedelta(minutes=5)


@dataclass(frozen=True)
class Pass:
    """What one pass did: rows read, deliveries made, and where the next pass starts."""

    rows: int
    new_deliveries: int
    next_since: datetime


async def refan_published_events(
    conn: Connection, topics: list[str], *, since: datetime, until: datetime, limit: int
) -> Pass:
    """Fan out again up to ``limit`` outbox rows of ``topics`` published in [``since``, ``until``), oldest
    first; ``next_since`` continues after them (minus :data:`OVERLAP` once the window is done)."""
    cursor = await conn.execute(
        """SELECT payload, published_at FROM outbox
           WHERE published_at >= %s AND published_at < %s AND topic = ANY (%s)
           ORDER BY published_at LIMIT %s""",
        (since, until, topics, limit),
    )
    rows = await cursor.fetchall()
    events = []
    for row in rows:
        payload: bytes = row["payload"]  # type: ignore[assignment]
        try:
            event = webhook_event_of(decode_message(payload))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # not a message this version knows; the consumer skipped it too
        if event is not None:
            events.append(event)
    new = await fan_out(conn, events, registered_before=True) if events else 0
    if len(rows) < limit:
        return Pass(rows=len(rows), new_deliveries=new, next_since=max(since, until - OVERLAP))
    last: datetime = rows[-1]["published_at"]  # type: ignore[assignment]
    # A full page: continue from its last time (rows sharing it are read again, harmlessly).
    return Pass(
        rows=len(rows), new_deliveries=new, next_since=last if last > since else last + timedelta(microseconds=1)
    )
