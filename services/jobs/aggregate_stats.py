"""``healingwork job aggregate-stats``: daily rollups per Sequence, revision, step and UTC day.

Each day is recomputed from the facts (leads, enrollments, events) in one statement and one short
transaction, and written as an upsert that touches only rows whose numbers changed, plus a delete of
rows that no longer have facts: running it twice changes nothing, and events that arrive late (an open
recorded the next morning for yesterday) are picked up by the default window, yesterday and today.

What is counted, per (day, sequence, revision, step):

* ``leads_accepted`` and ``enrolled`` (on the step-0 row only): leads accepted that day that are
  enrolled in the Sequence revision, and enrollments created that day;
* ``sent``, ``dead``, ``unsubscribes``, ``bounces``, ``complaints``: messages with such an event that day;
  ``failed``: temporary failures that day (each ``failed`` event);
* ``unique_opens`` / ``unique_clicks``: messages whose *first* open / click happened that day, so a sum
  over days counts each message once; opens and clicks flagged ``automated`` (privacy proxies, link
  scanners) are left out.

* ``skipped``, ``condition_failures``, ``exited_goal``: the scheduler's own records of that day
  (``step.skipped``, ``step.failed``, ``enrollment.exited`` events, which name the step but no message);
* per A/B variant (``daily_variant_stats``): sent, unique opens, unique clicks of messages with a variant.

Other events without a message (custom events) belong to no step and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from services.common.clock import utcnow
from services.common.db import Connection, transaction
from services.jobs.runner import JobContext

COUNTERS = (
    "leads_accepted",
    "enrolled",
    "sent",
    "failed",
    "dead",
    "unique_opens",
    "unique_clicks",
    "unsubscribes",
    "bounces",
    "complaints",
    "skipped",
    "condition_failures",
    "exited_goal",
)

ROLLUP_DAY = """
WITH ev AS (
    SELECT m.sequence_id, m.revision, m.step_position, e.type, e.message_id, e.automated
    FROM events e
    JOIN messages m ON m.id = e.message_id
    WHERE e.occurred_at >= %(start)s AND e.occurred_at < %(end)s
),
message_counts AS (
    SELECT sequence_id, revision, step_position,
        count(DISTINCT message_id) FILTER (WHERE type = 'sent') AS sent,
        count(*) FILTER (WHERE type = 'failed') AS failed,
        count(DISTINCT message_id) FILTER (WHERE type = 'dead') AS dead,
        count(DISTINCT message_id) FILTER (
            WHERE type = 'opened' AND NOT automated AND NOT EXISTS (
                SELECT 1 FROM events p
                WHERE p.message_id = ev.message_id AND p.type = 'opened' AND NOT p.automated
                  AND p.occurred_at < %(start)s)) AS unique_opens,
        count(DISTINCT message_id) FILTER (
            WHERE type = 'clicked' AND NOT automated AND NOT EXISTS (
                SELECT 1 FROM events p
                WHERE p.message_id = ev.message_id AND p.type = 'clicked' AND NOT p.automated
                  AND p.occurred_at < %(start)s)
        ) AS unique_clicks,
        count(DISTINCT message_id) FILTER (WHERE type = 'unsubscribed') AS unsubscribes,
        count(DISTINCT message_id) FILTER (WHERE type = 'bounced') AS bounces,
        count(DISTINCT message_id) FILTER (WHERE type = 'complained') AS complaints
    FROM ev
    GROUP BY sequence_id, revision, step_position
),
scheduler_counts AS (
    SELECT sequence_id, revision, step_position,
        count(*) FILTER (WHERE type = 'step.skipped') AS skipped,
        count(*) FILTER (WHERE type = 'step.failed') AS condition_failures,
        count(*) FILTER (WHERE type = 'enrollment.exited' AND detail = 'goal') AS exited_goal
    FROM events
    WHERE occurred_at >= %(start)s AND occurred_at < %(end)s AND message_id IS NULL
      AND type IN ('step.skipped', 'step.failed', 'enrollment.exited')
    GROUP BY sequence_id, revision, step_position
),
entries AS (
    SELECT en.sequence_id, en.revision, 1 AS accepted, 0 AS enrolled
    FROM leads l JOIN enrollments en ON en.lead_id = l.id
    WHERE l.created_at >= %(start)s AND l.created_at < %(end)s
    UNION ALL
    SELECT sequence_id, revision, 0, 1
    FROM enrollments
    WHERE created_at >= %(start)s AND created_at < %(end)s
),
entry_counts AS (
    SELECT sequence_id, revision, 0 AS step_position,
           sum(accepted)::integer AS leads_accepted, sum(enrolled)::integer AS enrolled
    FROM entries
    GROUP BY sequence_id, revision
),
step_keys AS (
    SELECT sequence_id, revision, step_position FROM message_counts
    UNION SELECT sequence_id, revision, step_position FROM entry_counts
    UNION SELECT sequence_id, revision, step_position FROM scheduler_counts
),
computed AS (
    SELECT %(day)s::date AS day, k.sequence_id, k.revision, k.step_position,
           coalesce(n.leads_accepted, 0) AS leads_accepted, coalesce(n.enrolled, 0) AS enrolled,
           coalesce(m.sent, 0) AS sent, coalesce(m.failed, 0) AS failed, coalesce(m.dead, 0) AS dead,
           coalesce(m.unique_opens, 0) AS unique_opens, coalesce(m.unique_clicks, 0) AS unique_clicks,
           coalesce(m.unsubscribes, 0) AS unsubscribes, coalesce(m.bounces, 0) AS bounces,
           coalesce(m.complaints, 0) AS complaints, coalesce(c.skipped, 0) AS skipped,
           coalesce(c.condition_failures, 0) AS condition_failures, coalesce(c.exited_goal, 0) AS exited_goal
    FROM step_keys k
    LEFT JOIN message_counts m USING (sequence_id, revision, step_position)
    LEFT JOIN entry_counts n USING (sequence_id, revision, step_position)
    LEFT JOIN scheduler_counts c USING (sequence_id, revision, step_position)
    -- A Sequence's rows need the Sequence (a record of an erased one's step is not counted).
    WHERE EXISTS (SELECT 1 FROM sequences s WHERE s.id = k.sequence_id)
),
upserted AS (
    INSERT INTO daily_stats (day, sequence_id, revision, step_position, leads_accepted, enrolled, sent, failed,
                             dead, unique_opens, unique_clicks, unsubscribes, bounces, complaints, skipped,
                             condition_failures, exited_goal)
    SELECT * FROM computed
    ON CONFLICT (sequence_id, day, revision, step_position) DO UPDATE
        SET leads_accepted = EXCLUDED.leads_accepted, enrolled = EXCLUDED.enrolled, sent = EXCLUDED.sent,
            failed = EXCLUDED.failed, dead = EXCLUDED.dead, unique_opens = EXCLUDED.unique_opens,
            unique_clicks = EXCLUDED.unique_clicks, unsubscribes = EXCLUDED.unsubscribes,
            bounces = EXCLUDED.bounces, complaints = EXCLUDED.complaints, skipped = EXCLUDED.skipped,
            condition_failures = EXCLUDED.condition_failures, exited_goal = EXCLUDED.exited_goal,
            updated_at = now()
        WHERE (daily_stats.leads_accepted, daily_stats.enrolled, daily_stats.sent, daily_stats.failed,
               daily_stats.dead, daily_stats.unique_opens, daily_stats.unique_clicks, daily_stats.unsubscribes,
               daily_stats.bounces, daily_stats.complaints, daily_stats.skipped, daily_stats.condition_failures,
               daily_stats.exited_goal)
            IS DISTINCT FROM
              (EXCLUDED.leads_accepted, EXCLUDED.enrolled, EXCLUDED.sent, EXCLUDED.failed, EXCLUDED.dead,
               EXCLUDED.unique_opens, EXCLUDED.unique_clicks, EXCLUDED.unsubscribes, EXCLUDED.bounces,
               EXCLUDED.complaints, EXCLUDED.skipped, EXCLUDED.condition_failures, EXCLUDED.exited_goal)
    RETURNING 1
),
removed AS (
    DELETE FROM daily_stats d
    WHERE d.day = %(day)s AND NOT EXISTS (
        SELECT 1 FROM computed c
        WHERE c.sequence_id = d.sequence_id AND c.revision = d.revision AND c.step_position = d.step_position)
    RETURNING 1
)
SELECT (SELECT count(*) FROM computed) AS rows, (SELECT count(*) FROM upserted) AS changed,
       (SELECT count(*) FROM removed) AS removed
"""


# Per A/B variant: messages with a variant, first opens and clicks as above.
ROLLUP_VARIANTS_DAY = """
WITH ev AS (
    SELECT m.sequence_id, m.revision, m.step_position, m.variant, e.type, e.message_id
    FROM events e
    JOIN messages m ON m.id = e.message_id
    WHERE e.occurred_at >= %(start)s AND e.occurred_at < %(end)s AND m.variant IS NOT NULL
      AND e.type IN ('sent', 'opened', 'clicked') AND NOT e.automated
),
computed AS (
    SELECT %(day)s::date AS day, sequence_id, revision, step_position, variant,
        count(DISTINCT message_id) FILTER (WHERE type = 'sent') AS sent,
        count(DISTINCT message_id) FILTER (
            WHERE type = 'opened' AND NOT EXISTS (
                SELECT 1 FROM events p
                WHERE p.message_id = ev.message_id AND p.type = 'opened' AND NOT p.automated
                  AND p.occurred_at < %(start)s)) AS unique_opens,
        count(DISTINCT message_id) FILTER (
            WHERE type = 'clicked' AND NOT EXISTS (
                SELECT 1 FROM events p
                WHERE p.message_id = ev.message_id AND p.type = 'clicked' AND NOT p.automated
                  AND p.occurred_at < %(start)s)) AS unique_clicks
    FROM ev
    GROUP BY sequence_id, revision, step_position, variant
),
upserted AS (
    INSERT INTO daily_variant_stats (day, sequence_id, revision, step_position, variant, sent, unique_opens,
                                     unique_clicks)
    SELECT * FROM computed
    ON CONFLICT (sequence_id, day, revision, step_position, variant) DO UPDATE
        SET sent = EXCLUDED.sent, unique_opens = EXCLUDED.unique_opens, unique_clicks = EXCLUDED.unique_clicks,
            updated_at = now()
        WHERE (daily_variant_stats.sent, daily_variant_stats.unique_opens, daily_variant_stats.unique_clicks)
            IS DISTINCT FROM (EXCLUDED.sent, EXCLUDED.unique_opens, EXCLUDED.unique_clicks)
    RETURNING 1
)
DELETE FROM daily_variant_stats d
WHERE d.day = %(day)s AND NOT EXISTS (
    SELECT 1 FROM computed c
    WHERE c.sequence_id = d.sequence_id AND c.revision = d.revision AND c.step_position = d.step_position
      AND c.variant = d.variant)
"""


@dataclass(frozen=True)
class DayRollup:
    day: date
    rows: int
    changed: int
    removed: int


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC instants a day starts and ends at (end exclusive)."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def default_days(window_days: int, today: date | None = None) -> list[date]:
    """The last ``window_days`` UTC days, today included, oldest first (2 = yesterday and today)."""
    today = today or utcnow().date()
    return [today - timedelta(days=back) for back in range(window_days - 1, -1, -1)]


async def rollup_day(conn: Connection, day: date) -> DayRollup:
    """Recompute the rollups of one UTC day inside the caller's transaction; idempotent."""
    start, end = day_bounds(day)
    cursor = await conn.execute(ROLLUP_DAY, {"day": day, "start": start, "end": end})
    row = await cursor.fetchone()
    await conn.execute(ROLLUP_VARIANTS_DAY, {"day": day, "start": start, "end": end})
    assert row is not None
    return DayRollup(day, int(row["rows"]), int(row["changed"]), int(row["removed"]))  # type: ignore[call-overload]


async def aggregate_stats(ctx: JobContext, *, days: list[date] | None = None) -> dict[str, int]:
    """The job: recompute each day (default: the ``STATS_WINDOW_DAYS`` window), one transaction per day."""
    chosen = days or default_days(ctx.settings.stats_window_days)
    totals = {"days": 0, "rows": 0, "changed": 0, "removed": 0}
    for day in chosen:
        async with transaction(ctx.pool) as conn:
            result = await rollup_day(conn, day)
        totals["days"] += 1
        totals["rows"] += result.rows
        totals["changed"] += result.changed
        totals["removed"] += result.removed
    return totals
