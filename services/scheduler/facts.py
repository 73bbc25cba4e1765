"""Reading what conditions see, for a batch of leads: each lead's row and its newest events.

Two queries per batch (leads by id; events by lead through ``events_lead_occurred_idx``, at most
:data:`MAX_EVENTS` per lead), whatever the batch size. Each lead's facts hold that lead's rows only.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from services.common.conditions import MAX_EVENTS, ConditionFacts, EventFact, LeadFact, email_domain
from services.common.db import Connection

# What happened to a message that a condition does not look at: the lifecycle's own bookkeeping and
# the scheduler's records.
HIDDEN_EVENT_TYPES = ["failed", "dead", "skipped", "replayed", "step.skipped", "step.failed", "enrollment.exited"]

# Every lead's existence; the columns only where a condition reads ``lead``.
_LEADS = """
SELECT l.id, w.wanted,
       CASE WHEN w.wanted THEN l.email_normalized END AS email_normalized,
       l.first_name, l.last_name, l.source, l.tags, CASE WHEN w.wanted THEN l.utm END AS utm, l.locale,
       l.timezone, CASE WHEN w.wanted THEN l.metadata END AS metadata, l.created_at
FROM unnest(%s::uuid[], %s::bool[]) AS w(id, wanted)
JOIN leads l ON l.id = w.id
"""

_EVENTS = """
SELECT l.id AS lead_id, ev.type, ev.occurred_at, ev.automated, ev.properties,
       st.name AS step, s.name AS sequence, m.variant
FROM unnest(%(leads)s::uuid[]) AS l(id)
CROSS JOIN LATERAL (
    SELECT * FROM events x
    WHERE x.lead_id = l.id AND x.type <> ALL(%(hidden)s)
    ORDER BY x.occurred_at DESC
    LIMIT %(limit)s
) ev
LEFT JOIN sequence_steps st
       ON st.sequence_id = ev.sequence_id AND st.revision = ev.revision AND st.position = ev.step_position
LEFT JOIN sequences s ON s.id = ev.sequence_id
LEFT JOIN messages m ON m.id = ev.message_id
ORDER BY l.id, ev.occurred_at DESC
"""


async def load_condition_facts(
    conn: Connection, lead_ids: Collection[uuid.UUID], now: datetime, *, lead_rows: Collection[uuid.UUID] | None = None
) -> dict[uuid.UUID, ConditionFacts]:
    """The facts of each lead that still exists (an erased lead has none). ``lead_rows``: the leads
    whose conditions read ``lead`` (default: all); the others get their events only."""
    if not lead_ids:
        return {}
    wanted = set(lead_ids) if lead_rows is None else set(lead_rows)
    ids = list(set(lead_ids))
    events: dict[uuid.UUID, list[EventFact]] = {lead: [] for lead in ids}
    cursor = await conn.execute(_EVENTS, {"leads": ids, "hidden": HIDDEN_EVENT_TYPES, "limit": MAX_EVENTS})
    for row in await cursor.fetchall():
        events[row["lead_id"]].append(  # type: ignore[index]
            EventFact(
                type=row["type"],  # type: ignore[arg-type]
                at=row["occurred_at"],  # type: ignore[arg-type]
                step=row["step"] or "",  # type: ignore[arg-type]
                sequence=row["sequence"] or "",  # type: ignore[arg-type]
                variant=row["variant"] or "",  # type: ignore[arg-type]
                automated=bool(row["automated"]),
                properties=row["properties"] or {},  # type: ignore[arg-type]
            )
        )
    cursor = await conn.execute(_LEADS, (ids, [lead in wanted for lead in ids]))
    facts: dict[uuid.UUID, ConditionFacts] = {}
    for row in await cursor.fetchall():
        if not row["wanted"]:
            facts[row["id"]] = ConditionFacts(None, events[row["id"]], now)  # type: ignore[index]
            continue
        lead = LeadFact(
            domain=email_domain(str(row["email_normalized"])),
            source=row["source"],  # type: ignore[arg-type]
            accepted_at=row["created_at"],  # type: ignore[arg-type]
            first_name=row["first_name"],  # type: ignore[arg-type]
            last_name=row["last_name"],  # type: ignore[arg-type]
            tags=row["tags"] or [],  # type: ignore[arg-type]
            utm=row["utm"] or {},  # type: ignore[arg-type]
            locale=row["locale"],  # type: ignore[arg-type]
            timezone=row["timezone"],  # type: ignore[arg-type]
            metadata=row["metadata"] or {},  # type: ignore[arg-type]
        )
        facts[row["id"]] = ConditionFacts(lead, events[row["id"]], now)  # type: ignore[index]
    return facts
