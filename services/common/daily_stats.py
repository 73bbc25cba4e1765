"""Reading the daily rollups (written by ``healingwork job aggregate-stats``) with derived rates."""

from __future__ import annotations

import uuid
from datetime import date

import msgspec

from proto.stats import Counts, Rates, SequenceStats, StatsReport, StatsRow, VariantStats
from services.common.db import Connection

# Served by daily_stats' primary key (sequence_id, day, ...).
READ_ROLLUPS = """SELECT s.id AS sequence_id, s.namespace, s.name, d.day, d.revision, d.step_position,
           coalesce(st.name, '') AS step_name,
           d.leads_accepted, d.enrolled, d.sent, d.failed, d.dead, d.unique_opens, d.unique_clicks,
           d.unsubscribes, d.bounces, d.complaints, d.skipped, d.condition_failures, d.exited_goal
    FROM daily_stats d
    JOIN sequences s ON s.id = d.sequence_id
    LEFT JOIN sequence_steps st
        ON st.sequence_id = d.sequence_id AND st.revision = d.revision AND st.position = d.step_position
    WHERE d.day BETWEEN %(from)s AND %(to)s
      AND (%(sequence)s::uuid IS NULL OR d.sequence_id = %(sequence)s::uuid)
    ORDER BY s.namespace, s.name, d.day, d.revision, d.step_position"""

# Served by daily_variant_stats' primary key.
READ_VARIANT_ROLLUPS = """SELECT sequence_id, day, revision, step_position, variant, sent, unique_opens, unique_clicks
    FROM daily_variant_stats
    WHERE day BETWEEN %(from)s AND %(to)s AND (%(sequence)s::uuid IS NULL OR sequence_id = %(sequence)s::uuid)
    ORDER BY sequence_id, day, revision, step_position, variant"""

COUNT_FIELDS = tuple(field.name for field in msgspec.structs.fields(Counts))


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator > 0 else None


def derive_rates(counts: Counts) -> Rates:
    """The rates of :class:`Rates` from counts; a rate without a denominator is None, never 0."""
    delivered = max(counts.sent - counts.bounces, 0)
    return Rates(
        delivery=_ratio(delivered, counts.sent + counts.dead),
        open=_ratio(counts.unique_opens, delivered),
        click=_ratio(counts.unique_clicks, delivered),
        unsubscribe=_ratio(counts.unsubscribes, delivered),
        bounce=_ratio(counts.bounces, counts.sent),
    )


def add_counts(a: Counts, b: Counts) -> Counts:
    return Counts(**{name: getattr(a, name) + getattr(b, name) for name in COUNT_FIELDS})


async def find_sequence(conn: Connection, namespace: str, name: str) -> uuid.UUID | None:
    """The id of a live or deleted Sequence by namespace and name, or None."""
    cursor = await conn.execute("SELECT id FROM sequences WHERE namespace = %s AND name = %s", (namespace, name))
    row = await cursor.fetchone()
    return None if row is None else row["id"]  # type: ignore[return-value]


async def read_stats(conn: Connection, *, from_day: date, to_day: date, sequence_id: uuid.UUID | None) -> StatsReport:
    """The rollups of ``[from_day, to_day]`` (of one Sequence, or all), grouped by Sequence, with totals."""
    params = {"from": from_day, "to": to_day, "sequence": sequence_id}
    variants: dict[tuple[object, ...], list[VariantStats]] = {}
    cursor = await conn.execute(READ_VARIANT_ROLLUPS, params)
    for row in await cursor.fetchall():
        sent = int(row["sent"])  # type: ignore[call-overload]
        opens, clicks = int(row["unique_opens"]), int(row["unique_clicks"])  # type: ignore[call-overload]
        key = (row["sequence_id"], row["day"], row["revision"], row["step_position"])
        variants.setdefault(key, []).append(
            VariantStats(
                variant=str(row["variant"]),
                sent=sent,
                unique_opens=opens,
                unique_clicks=clicks,
                open=_ratio(opens, sent),
                click=_ratio(clicks, sent),
            )
        )
    cursor = await conn.execute(READ_ROLLUPS, params)
    grouped: dict[object, tuple[str, str, list[StatsRow]]] = {}
    for row in await cursor.fetchall():
        counts = Counts(**{name: int(row[name]) for name in COUNT_FIELDS})  # type: ignore[call-overload]
        entry = grouped.setdefault(row["sequence_id"], (str(row["namespace"]), str(row["name"]), []))
        entry[2].append(
            StatsRow(
                day=row["day"],  # type: ignore[arg-type]
                revision=int(row["revision"]),  # type: ignore[call-overload]
                step=int(row["step_position"]),  # type: ignore[call-overload]
                step_name=str(row["step_name"]),
                counts=counts,
                rates=derive_rates(counts),
                variants=variants.get((row["sequence_id"], row["day"], row["revision"], row["step_position"]), []),
            )
        )
    sequences = []
    for namespace, name, rows in grouped.values():
        totals = Counts()
        for stats_row in rows:
            totals = add_counts(totals, stats_row.counts)
        sequences.append(
            SequenceStats(namespace=namespace, name=name, totals=totals, rates=derive_rates(totals), rows=rows)
        )
    return StatsReport(from_day=from_day, to_day=to_day, sequences=sequences)
