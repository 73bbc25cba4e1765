"""The backstop of the fan-out: events are found again in PostgreSQL, not only in Kafka.

The consumer fans out what Kafka hands it; a broker that loses its data (Tansu's memory storage on a
restart, a cluster rebuilt) would take events that were published but not yet consumed with it. Every
such event is still an outbox row (kept ``OUTBOX_RETENTION_HOURS``, published or not), holding the
exact message with its id, so this pass decodes the source topics' rows published in a window and fans
them out again. The fan-out is idempotent on (endpoint, event id), so an event seen by both paths makes
one delivery with one ``webhook-id``; only endpoints registered before an event occurred get it here.

Two windows by ``published_at`` (served by ``outbox_published_at_idx``) read each row twice, not once
per pass: the fresh window, from the previous pass's end to now, as soon as a row is published; and the
late window, which trails by :func:`relay_lag`. A relay stamps ``published_at`` when its pass starts and
commits after the broker acknowledged, so a row can appear with a time already behind the fresh window;
no relay pass lasts longer than the lag, so the late window, reaching that time only a lag later, finds
it. (Until 2026-11-30 one window overlapped the previous pass by 5 minutes: every event was fanned out
again on every pass for 5 minutes, 10 times at the default 30 s interval.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from proto.codec import decode_message
from services.common.config import BusSettings
from services.common.db import Connection
from services.common.webhook_events import webhook_event_of
from services.outgoing_webhooks.fanout import fan_out

# Added to the relay's bounds (its statements and the broker's acknowledgement) for the late window.
LAG_MARGIN = timedelta(seconds=5)


def relay_lag(settings: BusSettings) -> timedelta:
    """How far behind its commit a relay's pass can have stamped ``published_at``: the claiming UPDATE and
    the COMMIT (each within DB_STATEMENT_TIMEOUT_S) and ``publish_batch`` (at most 2 ×
    KAFKA_REQUEST_TIMEOUT_S), plus a margin; the settings are the platform's, shared by every process."""
    return timedelta(seconds=2 * settings.db_statement_timeout_s + 2 * settings.kafka_request_timeout_s) + LAG_MARGIN


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
    first; ``next_since`` continues after them (``until`` once the window is done)."""
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
        return Pass(rows=len(rows), new_deliveries=new, next_since=max(since, until))
    last: datetime = rows[-1]["published_at"]  # type: ignore[assignment]
    # A full page: continue from its last time (rows sharing it are read again, harmlessly).
    return Pass(
        rows=len(rows), new_deliveries=new, next_since=last if last > since else last + timedelta(microseconds=1)
    )


@dataclass
class Windows:
    """The fresh and the late window of the passes of one process (module docstring)."""

    lag: timedelta
    lookback: timedelta
    fresh: datetime | None = None
    late: datetime | None = None

    async def reconcile(self, conn: Connection, topics: list[str], *, now: datetime, limit: int) -> tuple[int, bool]:
        """One pass over both windows up to ``now``: deliveries made, and whether a window filled its
        ``limit`` (the caller passes again at once)."""
        if self.fresh is None or self.late is None:
            # At start the fresh window reads the lookback once; the late one covers what a relay pass
            # in flight may still commit behind it.
            self.fresh, self.late = now - self.lookback, now - self.lag
        fresh = await refan_published_events(conn, topics, since=self.fresh, until=now, limit=limit)
        late = await refan_published_events(
            conn, topics, since=self.late, until=max(self.late, now - self.lag), limit=limit
        )
        self.fresh, self.late = fresh.next_since, late.next_since
        return fresh.new_deliveries + late.new_deliveries, max(fresh.rows, late.rows) >= limit
