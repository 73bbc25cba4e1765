"""Events in, delivery rows out: one row per event and enabled endpoint subscribed to its type.

Idempotent: a row is keyed by (endpoint, event id), so an event consumed again (a Kafka redelivery,
a rewind) makes no second delivery, and the delivery keeps its id, which is the ``webhook-id``.
Endpoints disabled when the event arrives get no row for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from services.common.db import Connection
from services.common.webhook_events import WebhookEvent, webhook_body

_FAN_OUT = """
    INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, body)
    SELECT gen_random_uuid(), e.id, ev.event_id, ev.event_type, ev.body
    FROM unnest(%(event_ids)s::uuid[], %(types)s::text[], %(bodies)s::bytea[], %(occurred)s::timestamptz[])
        AS ev(event_id, event_type, body, occurred_at)
    JOIN webhook_endpoints e ON e.status = 'enabled' AND ev.event_type = ANY (e.events)
    WHERE e.id <> ALL (%(excluded)s::uuid[])
      AND (NOT %(registered_before)s OR e.created_at <= ev.occurred_at)
    ON CONFLICT (endpoint_id, event_id) DO NOTHING"""


async def fan_out(
    conn: Connection,
    events: Sequence[WebhookEvent],
    *,
    excluded: Sequence[uuid.UUID] = (),
    registered_before: bool = False,
) -> int:
    """Queue a delivery of each event to every enabled endpoint subscribed to its type (but the
    ``excluded`` endpoints; with ``registered_before``, only endpoints registered before the event
    occurred, so a reconcile pass does not replay history to a new endpoint); returns how many
    deliveries are new."""
    if not events:
        return 0
    cursor = await conn.execute(
        _FAN_OUT,
        {
            "event_ids": [event.id for event in events],
            "types": [event.type for event in events],
            "bodies": [webhook_body(event) for event in events],
            "occurred": [event.occurred_at for event in events],
            "registered_before": registered_before,
            "excluded": list(excluded),
        },
    )
    return cursor.rowcount
