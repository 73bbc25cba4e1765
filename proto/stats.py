"""HTTP bodies of ``GET /v1/stats``: the daily rollups and the rates derived from them."""

from __future__ import annotations

from datetime import date

import msgspec


class Counts(msgspec.Struct, frozen=True, kw_only=True):
    """What happened: entry counters (on step 0), then per-message counters."""

    leads_accepted: int = 0
    enrolled: int = 0
    sent: int = 0
    failed: int = 0
    dead: int = 0
    unique_opens: int = 0
    unique_clicks: int = 0
    unsubscribes: int = 0
    bounces: int = 0
    complaints: int = 0
    # What conditions did (issue 16): steps skipped, steps failed by a condition, goals reached.
    skipped: int = 0
    condition_failures: int = 0
    exited_goal: int = 0


class Rates(msgspec.Struct, frozen=True, kw_only=True):
    """Ratios in [0, 1], rounded to 4 places; null where the denominator is 0.

    delivery = (sent − bounces) / (sent + dead); bounce = bounces / sent; open, click and unsubscribe
    are unique opens, unique clicks and unsubscribes per delivered message (sent − bounces).
    """

    delivery: float | None
    open: float | None
    click: float | None
    unsubscribe: float | None
    bounce: float | None


class VariantStats(msgspec.Struct, frozen=True, kw_only=True):
    """One A/B variant of a step on one day: sent, unique opens and clicks, and their rates per sent."""

    variant: str
    sent: int
    unique_opens: int
    unique_clicks: int
    open: float | None
    click: float | None


class StatsRow(msgspec.Struct, frozen=True, kw_only=True):
    """One day of one step of one Sequence revision (with its A/B variants, if the step has any)."""

    day: date
    revision: int
    step: int
    step_name: str
    counts: Counts
    rates: Rates
    variants: list[VariantStats] = []


class SequenceStats(msgspec.Struct, frozen=True, kw_only=True):
    """A Sequence's rows in the range, and their totals."""

    namespace: str
    name: str
    totals: Counts
    rates: Rates
    rows: list[StatsRow]


class StatsReport(msgspec.Struct, frozen=True, kw_only=True, rename={"from_day": "from", "to_day": "to"}):
    """The answer to ``GET /v1/stats``: every matching Sequence with rollups in ``[from, to]``."""

    from_day: date
    to_day: date
    sequences: list[SequenceStats]
