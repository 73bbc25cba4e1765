"""aggregate-stats on a real PostgreSQL, against a hand-computed fixture: correct, idempotent,
late events picked up, privacy-proxy opens excluded, stale rows removed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import pytest

from services.common.config import JobSettings
from services.common.db import transaction
from services.jobs.aggregate_stats import COUNTERS, aggregate_stats, default_days
from tests.support.jobs import Pool, insert_lead, job_context, job_settings
from tests.support.platform import apply_examples, fetch_all

pytestmark = pytest.mark.integration

DAY1, DAY2 = date(2026, 1, 10), date(2026, 1, 11)


def at(day: date, hhmm: str) -> datetime:
    hours, minutes = map(int, hhmm.split(":"))
    return datetime(day.year, day.month, day.day, hours, minutes, tzinfo=UTC)


@pytest.fixture
async def settings(migrated_database_url: str) -> JobSettings:
    await apply_examples(migrated_database_url)
    return job_settings(migrated_database_url)


@pytest.fixture
async def pool(settings: JobSettings) -> AsyncIterator[Pool]:
    async with job_context(settings) as ctx:
        yield ctx.pool


class Facts:
    """Leads, enrollments, messages and events written with chosen times."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def lead(self, accepted: datetime, enrolled: datetime | None) -> uuid.UUID:
        lead_id = await insert_lead(self.pool)
        async with transaction(self.pool) as conn:
            await conn.execute("UPDATE leads SET created_at = %s WHERE id = %s", (accepted, lead_id))
            if enrolled is not None:
                await conn.execute(
                    """INSERT INTO enrollments (id, lead_id, sequence_id, revision, next_step, status, created_at)
                       SELECT gen_random_uuid(), %s, id, current_revision, 1, 'completed', %s
                       FROM sequences WHERE name = 'welcome'""",
                    (lead_id, enrolled),
                )
        return lead_id

    async def message(self, lead_id: uuid.UUID, step: int = 0) -> uuid.UUID:
        message_id = uuid.uuid4()
        async with transaction(self.pool) as conn:
            await conn.execute(
                """INSERT INTO messages (id, enrollment_id, lead_id, sequence_id, revision, step_position, status)
                   SELECT %s, id, lead_id, sequence_id, revision, %s, 'queued' FROM enrollments WHERE lead_id = %s""",
                (message_id, step, lead_id),
            )
        return message_id

    async def event(self, message_id: uuid.UUID, kind: str, when: datetime, *, automated: bool = False) -> None:
        async with transaction(self.pool) as conn:
            await conn.execute(
                """INSERT INTO events (message_id, lead_id, type, occurred_at, automated)
                   SELECT id, lead_id, %s, %s, %s FROM messages WHERE id = %s""",
                (kind, when, automated, message_id),
            )


async def _stats(pool: Pool) -> dict[tuple[date, int], dict[str, object]]:
    rows = await fetch_all(pool.conninfo, "SELECT * FROM daily_stats ORDER BY day, step_position")
    return {(row["day"], row["step_position"]): row for row in rows}  # type: ignore[misc]


def _counters(row: dict[str, object]) -> dict[str, object]:
    return {name: row[name] for name in COUNTERS}


def expected(**counts: int) -> dict[str, int]:
    return {name: counts.get(name, 0) for name in COUNTERS}


@pytest.fixture
async def facts(pool: Pool) -> dict[str, uuid.UUID]:
    f = Facts(pool)
    a = await f.lead(at(DAY1, "10:00"), at(DAY1, "10:00"))
    b = await f.lead(at(DAY1, "10:00"), at(DAY1, "10:00"))
    c = await f.lead(at(DAY1, "10:00"), at(DAY1, "10:00"))
    d = await f.lead(at(DAY1, "23:59"), at(DAY2, "00:01"))  # accepted on day 1, enrolled on day 2
    ma, mb, mc, md = [await f.message(lead) for lead in (a, b, c, d)]
    ma2 = await f.message(a, step=1)
    await f.event(ma, "sent", at(DAY1, "10:01"))
    await f.event(ma, "opened", at(DAY1, "11:00"), automated=True)
    await f.event(ma, "opened", at(DAY1, "12:00"))
    await f.event(ma, "opened", at(DAY2, "09:00"))  # not its first open: counted on day 1 only
    await f.event(ma, "clicked", at(DAY2, "09:01"))
    await f.event(ma, "clicked", at(DAY2, "09:05"))
    await f.event(mb, "failed", at(DAY1, "10:01"))
    await f.event(mb, "failed", at(DAY1, "11:00"))
    await f.event(mb, "sent", at(DAY1, "12:00"))
    await f.event(mb, "opened", at(DAY1, "12:01"), automated=True)  # a privacy proxy, not a reader
    await f.event(mb, "bounced", at(DAY1, "12:05"))
    await f.event(mc, "failed", at(DAY1, "10:01"))
    await f.event(mc, "dead", at(DAY1, "13:00"))
    await f.event(md, "sent", at(DAY2, "00:02"))
    await f.event(md, "opened", at(DAY2, "08:00"))
    await f.event(md, "unsubscribed", at(DAY2, "08:01"))
    await f.event(md, "complained", at(DAY2, "08:02"))
    await f.event(ma2, "sent", at(DAY2, "10:00"))
    return {"a": a, "b": b, "c": c, "d": d, "mc": mc, "ma2": ma2}


async def test_rollups_match_the_hand_computed_fixture(
    settings: JobSettings, pool: Pool, facts: dict[str, uuid.UUID]
) -> None:
    async with job_context(settings) as ctx:
        totals = await aggregate_stats(ctx, days=[DAY1, DAY2])

    stats = await _stats(pool)
    assert set(stats) == {(DAY1, 0), (DAY2, 0), (DAY2, 1)}
    assert _counters(stats[DAY1, 0]) == expected(
        leads_accepted=4, enrolled=3, sent=2, failed=3, dead=1, unique_opens=1, bounces=1
    )
    assert _counters(stats[DAY2, 0]) == expected(
        enrolled=1, sent=1, unique_opens=1, unique_clicks=1, unsubscribes=1, complaints=1
    )
    assert _counters(stats[DAY2, 1]) == expected(sent=1)
    assert totals == {"days": 2, "rows": 3, "changed": 3, "removed": 0}


async def test_running_twice_changes_nothing(settings: JobSettings, pool: Pool, facts: dict[str, uuid.UUID]) -> None:
    async with job_context(settings) as ctx:
        await aggregate_stats(ctx, days=[DAY1, DAY2])
        before = await _stats(pool)
        again = await aggregate_stats(ctx, days=[DAY1, DAY2])

    assert await _stats(pool) == before  # updated_at included: not even touched
    assert (again["changed"], again["removed"]) == (0, 0)


async def test_late_event_and_vanished_facts_are_reflected_on_rerun(
    settings: JobSettings, pool: Pool, facts: dict[str, uuid.UUID]
) -> None:
    async with job_context(settings) as ctx:
        await aggregate_stats(ctx, days=[DAY1, DAY2])
        f = Facts(pool)
        await f.event(facts["mc"], "opened", at(DAY1, "20:00"))  # recorded late, happened on day 1
        async with transaction(pool) as conn:
            await conn.execute("DELETE FROM messages WHERE id = %s", (facts["ma2"],))
        rerun = await aggregate_stats(ctx, days=[DAY1, DAY2])

    stats = await _stats(pool)
    assert stats[DAY1, 0]["unique_opens"] == 2
    assert (DAY2, 1) not in stats
    assert (rerun["changed"], rerun["removed"]) == (1, 1)


async def test_default_window_is_yesterday_and_today_and_picks_up_late_events(
    settings: JobSettings, pool: Pool
) -> None:
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    f = Facts(pool)
    lead = await f.lead(at(yesterday, "09:00"), at(yesterday, "09:00"))
    message = await f.message(lead)
    await f.event(message, "sent", at(yesterday, "09:01"))
    async with job_context(settings) as ctx:
        await aggregate_stats(ctx)
        await f.event(message, "opened", at(yesterday, "23:00"))  # arrives after the first run
        await aggregate_stats(ctx)

    stats = await _stats(pool)
    assert list(stats) == [(yesterday, 0)]
    assert (stats[yesterday, 0]["sent"], stats[yesterday, 0]["unique_opens"]) == (1, 1)


def test_default_days_are_the_window_ending_today_oldest_first() -> None:
    assert default_days(2, today=DAY2) == [DAY1, DAY2]
    assert default_days(1, today=DAY2) == [DAY2]
