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
    FROM unnest(%(event_ids)s::uuid[], %(types)s::text[], %(bodies)s::bytea[]) AS ev(event_id, event_type, body)
    JOIN webhook_endpoints e ON e.status = 'enabled' AND ev.event_type = ANY (e.events)
    WHERE e.id <> ALL (%(excluded)s::uuid[])
    ON CONFLICT (endpoint_id, event_id) DO NOTHING"""


async def fan_out(conn: Connection, events: Sequence[WebhookEvent], *, excluded: Sequence[uuid.UUID] = ()) -> int:
    """Queue a delivery of each event to every enabled endpoint subscribed to its type (but the
    ``excluded`` endpoints); returns how many deliveries are new."""
    if not events:
        return 0
    cursor = await conn.execute(
        _FAN_OUT,
        {
            "event_ids": [event.id for event in events],
            "types": [event.type for event in events],
            "bodies": [webhook_body(event) for event in events],
            "excluded": list(excluded),
        },
    )
    return cursor.rowcount
