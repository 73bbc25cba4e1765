"""Reading what conditions see, for a batch of leads: each lead's row and its newest events.

One query per batch (each lead by id, its events by lead through ``events_lead_recent_idx``, at
most :data:`MAX_EVENTS` per lead), whatever the batch size. Each lead's facts hold that lead's rows only.
Of those newest events, only the types the batch's conditions can read are returned (the conditions'
checked ASTs say which: :mod:`services.common.condition_reads`), so a lead's ``sent`` and ``opened``
history is not read for an ``exitWhen`` about ``purchased``; what a condition sees is unchanged. The
window is cut from the index alone (it carries each event's type and id), and only the events kept are
read from the table.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from psycopg.rows import tuple_row

from services.common.conditions import MAX_EVENTS, ConditionFacts, EventFact, LeadFact, email_domain
from services.common.db import Connection

# What happened to a message that a condition does not look at: the lifecycle's own bookkeeping and
# the scheduler's records.
HIDDEN_EVENT_TYPES = ["failed", "dead", "skipped", "replayed", "step.skipped", "step.failed", "enrollment.exited"]

# One statement for the batch: each lead with its newest events, and its row only where a condition
# reads ``lead`` (a lead whose row is wanted and gone has no facts; the others are not probed at all).
# A lead whose row is not wanted and that has no event of the types read has no row in the result (its
# facts are empty). A lead is named by its position in the batch's array (an int), not its id, so no
# UUID is parsed per row; the row is read by a primary-key probe per lead (OFFSET 0 keeps it one, not a
# hash join over the whole leads table). The window (the newest MAX_EVENTS events, hidden types left
# out) is an index-only scan of events_lead_recent_idx; only the events of the types read are then
# fetched from the table, by id.
_FACTS = """
SELECT w.n, w.wanted AND coalesce(ev.rn, 1) = 1 AS with_lead,
       l.email_normalized, l.first_name, l.last_name, l.source, l.tags, l.utm, l.locale, l.timezone,
       l.metadata, l.created_at,
       ev.type, ev.occurred_at, ev.automated, ev.properties, st.name AS step, s.name AS sequence, m.variant
FROM unnest(%(leads)s::uuid[], %(wanted)s::bool[]) WITH ORDINALITY AS w(id, wanted, n)
LEFT JOIN LATERAL (
    SELECT x.email_normalized, x.first_name, x.last_name, x.source, x.tags, x.utm, x.locale, x.timezone,
           x.metadata, x.created_at
    FROM leads x WHERE w.wanted AND x.id = w.id OFFSET 0
) l ON true
LEFT JOIN LATERAL (
    SELECT e.type, e.occurred_at, e.automated, e.properties, e.sequence_id, e.revision, e.step_position,
           e.message_id, row_number() OVER (ORDER BY y.occurred_at DESC) AS rn
    FROM (
        SELECT x.id, x.type, x.occurred_at
        FROM events x
        WHERE x.lead_id = w.id AND x.type <> ALL(%(hidden)s)
        ORDER BY x.occurred_at DESC
        LIMIT %(limit)s
    ) y
    JOIN events e ON e.id = y.id
    WHERE %(every_type)s OR y.type = ANY(%(types)s)
) ev ON true
LEFT JOIN sequence_steps st
       ON st.sequence_id = ev.sequence_id AND st.revision = ev.revision AND st.position = ev.step_position
LEFT JOIN sequences s ON s.id = ev.sequence_id
LEFT JOIN messages m ON m.id = ev.message_id
WHERE (w.wanted AND l.created_at IS NOT NULL) OR (NOT w.wanted AND ev.rn IS NOT NULL)
ORDER BY w.n, ev.rn
"""


async def load_condition_facts(
    conn: Connection,
    lead_ids: Collection[uuid.UUID],
    now: datetime,
    *,
    lead_rows: Collection[uuid.UUID] | None = None,
    event_types: Collection[str] | None = None,
) -> dict[uuid.UUID, ConditionFacts]:
    """The facts of each lead. ``lead_rows``: the leads whose conditions read ``lead`` (default: all);
    their rows are read, and one that no longer exists (erased) has no facts. The others get their
    events only, without a probe of ``leads`` (about a third of the statement): the scheduler's leads
    exist, since erasing a lead deletes its enrollments and the scheduler holds those rows locked while
    it reads. ``event_types``:
    the types the conditions can read (default: any); of each lead's newest :data:`MAX_EVENTS`
    events, only those are returned."""
    if not lead_ids:
        return {}
    ids = list(dict.fromkeys(lead_ids))
    wanted = set(ids if lead_rows is None else lead_rows)
    cursor = conn.cursor(binary=True, row_factory=tuple_row)
    await cursor.execute(
        _FACTS,
        {
            "leads": ids,
            "wanted": [lead in wanted for lead in ids],
            "hidden": HIDDEN_EVENT_TYPES,
            "limit": MAX_EVENTS,
            "every_type": event_types is None,
            "types": sorted(event_types or ()),
        },
    )
    facts: dict[uuid.UUID, ConditionFacts] = {}
    lead: LeadFact | None = None
    events: list[EventFact] = []
    current = 0
    for (
        n,
        with_lead,
        email,
        first,
        last,
        source,
        tags,
        utm,
        locale,
        zone,
        metadata,
        created,
        *event,
    ) in await cursor.fetchall():
        if n != current:
            if current:
                facts[ids[current - 1]] = ConditionFacts(lead, events, now)
            current, lead, events = n, None, []
            if with_lead:
                lead = LeadFact(
                    domain=email_domain(str(email)),
                    source=source,
                    accepted_at=created,
                    first_name=first,
                    last_name=last,
                    tags=tags or [],
                    utm=utm or {},
                    locale=locale,
                    timezone=zone,
                    metadata=metadata or {},
                )
        kind, at, automated, properties, step, sequence, variant = event
        if kind is not None:
            events.append(
                EventFact(
                    type=kind,
                    at=at,
                    step=step or "",
                    sequence=sequence or "",
                    variant=variant or "",
                    automated=bool(automated),
                    properties=properties or {},
                )
            )
    if current:
        facts[ids[current - 1]] = ConditionFacts(lead, events, now)
    for lead_id in ids:
        if lead_id not in wanted and lead_id not in facts:
            facts[lead_id] = ConditionFacts(None, [], now)  # none of its events is of a type read
    return facts
