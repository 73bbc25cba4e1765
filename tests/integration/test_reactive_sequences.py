"""Sequences that react (issue 16), on a real PostgreSQL: trigger.when, a step's when, waitFor with
its timeout, exitWhen, pause, A/B variants, failing conditions, an event that wakes only its lead, an
event arriving while the step is being sent, a lead with many events, and a condition edited
mid-flight under both revision policies.

The clock: the event wake-up (a trigger in PostgreSQL) compares with the database's own time, so these
tests put the injected clock at the database's present."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import psycopg_pool
import pytest

from services.common.config import DatabaseSettings
from services.common.daily_stats import read_stats
from services.common.db import Connection, open_pool, transaction
from services.common.sequences import InvalidSequence, apply_sequence, parse_sequence_document
from services.common.step_rules import choose_variant, rules_of_spec
from services.dispatcher.dispatch import load_jobs
from services.jobs.aggregate_stats import rollup_day
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]
TOPIC = "email.dispatch"
HTML = "<p>Hi {{ lead.first_name }}</p>"


@pytest.fixture
async def pool(migrated_database_url: str) -> AsyncIterator[Pool]:
    pool = await open_pool(DatabaseSettings(database_url=migrated_database_url, db_pool_max_size=6))
    yield pool
    await pool.close()


@pytest.fixture
async def now(pool: Pool) -> datetime:
    async with transaction(pool) as conn:
        row = await (await conn.execute("SELECT date_trunc('second', clock_timestamp()) AS t")).fetchone()
    assert row is not None
    return row["t"]  # type: ignore[return-value]


def sequence(steps: list[dict[str, Any]], name: str = "react", **spec: Any) -> Any:
    document = {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": name},
        "spec": {"trigger": {"sources": ["website"]}, "steps": steps, **spec},
    }
    return parse_sequence_document(document, name)


def step(name: str, delay: str = "0s", **fields: Any) -> dict[str, Any]:
    return {"name": name, "delay": delay, "subject": f"About {name}", "html": HTML, **fields}


async def apply(pool: Pool, resource: Any) -> int:
    async with transaction(pool) as conn:
        return (await apply_sequence(conn, resource)).revision


async def add_lead(pool: Pool, *, locale: str | None = None, metadata: dict[str, Any] | None = None) -> uuid.UUID:
    lead_id = uuid.uuid4()
    address = f"{lead_id}@Example.org"
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, consent_marketing, locale, metadata)
               VALUES (%s, %s, %s, 'website', true, %s, %s::jsonb)""",
            (lead_id, address, address.lower(), locale, json.dumps(metadata or {})),
        )
    return lead_id


async def add_event(pool: Pool, lead: uuid.UUID, kind: str, **properties: Any) -> None:
    async with transaction(pool) as conn:
        await conn.execute(
            "INSERT INTO events (lead_id, type, properties) VALUES (%s, %s, %s::jsonb)",
            (lead, kind, json.dumps(properties)),
        )


async def add_opened(pool: Pool, lead: uuid.UUID, position: int = 0) -> None:
    """An open of the lead's message for ``position``, as tracking records it."""
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO events (message_id, lead_id, sequence_id, revision, step_position, type)
               SELECT id, lead_id, sequence_id, revision, step_position, 'opened' FROM messages
               WHERE lead_id = %s AND step_position = %s""",
            (lead, position),
        )


async def enroll(pool: Pool, lead: uuid.UUID, now: datetime) -> list[uuid.UUID]:
    async with transaction(pool) as conn:
        return await enroll_lead(conn, lead, now=now)


async def emit(pool: Pool, now: datetime) -> list[Any]:
    async with transaction(pool) as conn:
        return await emit_due_steps(conn, limit=100, topic=TOPIC, now=now)


async def enrollment(pool: Pool, lead: uuid.UUID) -> dict[str, Any]:
    [row] = await fetch_all(
        pool.conninfo,
        "SELECT next_step, next_run_at, status, exit_reason, wait_deadline, resume_at FROM enrollments"
        " WHERE lead_id = %s",
        lead,
    )
    return row


async def scheduler_events(pool: Pool, lead: uuid.UUID) -> list[tuple[str, int | None, str]]:
    rows = await fetch_all(
        pool.conninfo,
        "SELECT type, step_position, detail FROM events WHERE lead_id = %s"
        " AND type IN ('step.skipped', 'step.failed', 'enrollment.exited') ORDER BY id",
        lead,
    )
    return [(str(r["type"]), r["step_position"], str(r["detail"])) for r in rows]  # type: ignore[misc]


async def sent_positions(pool: Pool, lead: uuid.UUID) -> list[int]:
    rows = await fetch_all(
        pool.conninfo, "SELECT step_position FROM messages WHERE lead_id = %s ORDER BY queued_at", lead
    )
    return [int(r["step_position"]) for r in rows]  # type: ignore[call-overload]


REMINDER = sequence(
    [
        step("hello"),
        step("reminder", "2d", when="!events.exists(e, e.type == 'opened' && e.step == 'hello')"),
        step("last", "1d"),
    ]
)


# --- trigger.when and when --------------------------------------------------------------------------


async def test_trigger_when_enrolls_only_the_leads_it_is_true_for(pool: Pool, now: datetime) -> None:
    await apply(
        pool, sequence([step("hello")], trigger={"sources": ["website"], "when": "lead.locale.startsWith('de')"})
    )
    german, english = await add_lead(pool, locale="de-DE"), await add_lead(pool, locale="en-GB")

    assert len(await enroll(pool, german, now)) == 1
    assert await enroll(pool, english, now) == []


async def test_a_trigger_when_that_fails_to_evaluate_enrolls_nobody_and_the_other_sequences_still_enroll(
    pool: Pool, now: datetime
) -> None:
    failing = {"sources": ["website"], "when": "lead.metadata.plan == 'pro'"}
    await apply(pool, sequence([step("hello")], name="gated", trigger=failing))
    await apply(pool, sequence([step("hello")], name="open"))
    lead = await add_lead(pool)

    [enrolled] = await enroll(pool, lead, now)

    rows = await fetch_all(pool.conninfo, "SELECT s.name FROM enrollments e JOIN sequences s ON s.id = e.sequence_id")
    assert rows == [{"name": "open"}]
    assert enrolled is not None


async def test_a_step_whose_when_is_false_at_its_due_time_is_skipped_recorded_and_the_next_delay_runs_from_then(
    pool: Pool, now: datetime
) -> None:
    await apply(pool, REMINDER)
    lead = await add_lead(pool)
    await enroll(pool, lead, now)
    await emit(pool, now)
    await add_opened(pool, lead)

    skipped_at = now + timedelta(days=2)
    assert await emit(pool, skipped_at) == []

    assert await scheduler_events(pool, lead) == [("step.skipped", 1, "when is false")]
    state = await enrollment(pool, lead)
    assert (state["next_step"], state["next_run_at"]) == (2, skipped_at + timedelta(days=1))
    assert [s.step_position for s in await emit(pool, skipped_at + timedelta(days=1))] == [2]


async def test_a_step_whose_when_is_true_is_sent(pool: Pool, now: datetime) -> None:
    await apply(pool, REMINDER)
    lead = await add_lead(pool)
    await enroll(pool, lead, now)
    await emit(pool, now)

    assert [s.step_position for s in await emit(pool, now + timedelta(days=2))] == [1]
    assert await scheduler_events(pool, lead) == []


# --- waitFor --------------------------------------------------------------------------------------------

WAIT = {"condition": "events.exists(e, e.type == 'clicked')", "timeout": "3d"}


async def test_wait_for_sends_as_soon_as_an_event_for_the_lead_makes_it_true(pool: Pool, now: datetime) -> None:
    await apply(pool, sequence([step("after-click", waitFor=WAIT), step("next", "1d")]))
    lead = await add_lead(pool)
    await enroll(pool, lead, now)

    assert await emit(pool, now) == []
    waiting = await enrollment(pool, lead)
    assert waiting["wait_deadline"] == now + timedelta(days=3)
    assert waiting["next_run_at"] == now + timedelta(days=3)

    await add_event(pool, lead, "clicked")
    woken = await enrollment(pool, lead)
    assert woken["next_run_at"] <= now + timedelta(seconds=30)

    sent = await emit(pool, now + timedelta(seconds=30))
    assert [s.step_position for s in sent] == [0]
    after = await enrollment(pool, lead)
    assert (after["next_step"], after["wait_deadline"], after["resume_at"]) == (1, None, None)


@pytest.mark.parametrize(
    ("on_timeout", "sent", "recorded"), [("skip", [], [("step.skipped", 0, "waitFor timed out")]), ("send", [0], [])]
)
async def test_wait_for_at_its_timeout_skips_or_sends_as_on_timeout_says(
    pool: Pool, now: datetime, on_timeout: str, sent: list[int], recorded: list[Any]
) -> None:
    await apply(pool, sequence([step("after-click", waitFor={**WAIT, "onTimeout": on_timeout}), step("next", "1d")]))
    lead = await add_lead(pool)
    await enroll(pool, lead, now)
    await emit(pool, now)

    emitted = await emit(pool, now + timedelta(days=3))

    assert [s.step_position for s in emitted] == sent
    assert await scheduler_events(pool, lead) == recorded
    assert (await enrollment(pool, lead))["next_step"] == 1


# --- exitWhen --------------------------------------------------------------------------------------------

GOAL = "events.exists(e, e.type == 'purchased')"


async def test_exit_when_ends_the_enrollment_with_reason_goal_as_soon_as_the_event_arrives(
    pool: Pool, now: datetime
) -> None:
    await apply(pool, sequence([step("hello"), step("nudge", "2d")], exitWhen=GOAL))
    lead = await add_lead(pool)
    await enroll(pool, lead, now)
    await emit(pool, now)

    await add_event(pool, lead, "purchased", total=42)
    assert await emit(pool, now + timedelta(seconds=30)) == []

    state = await enrollment(pool, lead)
    assert (state["status"], state["exit_reason"], state["next_run_at"]) == ("completed", "goal", None)
    assert await scheduler_events(pool, lead) == [("enrollment.exited", 1, "goal")]
    assert await sent_positions(pool, lead) == [0]


async def test_an_event_that_does_not_reach_the_goal_leaves_the_due_time_as_it_was(pool: Pool, now: datetime) -> None:
    await apply(pool, sequence([step("hello"), step("nudge", "2d")], exitWhen=GOAL))
    lead = await add_lead(pool)
    await enroll(pool, lead, now)
    await emit(pool, now)

    await add_event(pool, lead, "viewed-pricing")
    assert await emit(pool, now + timedelta(seconds=30)) == []

    state = await enrollment(pool, lead)
    assert (state["status"], state["next_run_at"], state["resume_at"]) == ("active", now + timedelta(days=2), None)


async def test_an_event_wakes_only_that_leads_enrollments(pool: Pool, now: datetime) -> None:
    await apply(pool, sequence([step("hello"), step("nudge", "2d")], exitWhen=GOAL))
    buyer, other = await add_lead(pool), await add_lead(pool)
    for lead in (buyer, other):
        await enroll(pool, lead, now)
    await emit(pool, now)

    await add_event(pool, buyer, "purchased")

    assert (await enrollment(pool, buyer))["resume_at"] == now + timedelta(days=2)
    untouched = await enrollment(pool, other)
    assert (untouched["next_run_at"], untouched["resume_at"]) == (now + timedelta(days=2), None)


async def test_a_paused_sequence_holds_goals_and_waits(pool: Pool, now: datetime) -> None:
    steps = [step("hello"), step("nudge", "2d")]
    await apply(pool, sequence(steps, exitWhen=GOAL))
    lead = await add_lead(pool)
    await enroll(pool, lead, now)
    await emit(pool, now)
    await apply(pool, sequence(steps, exitWhen=GOAL, paused=True))

    await add_event(pool, lead, "purchased")
    assert await emit(pool, now + timedelta(seconds=30)) == []
    assert (await enrollment(pool, lead))["status"] == "active"

    await apply(pool, sequence(steps, exitWhen=GOAL, paused=False))
    await emit(pool, now + timedelta(minutes=1))
    assert (await enrollment(pool, lead))["exit_reason"] == "goal"


async def test_an_event_arriving_while_the_step_is_being_sent_is_seen_at_the_next_step(
    pool: Pool, now: datetime
) -> None:
    await apply(pool, sequence([step("hello"), step("nudge", "2d")], exitWhen=GOAL))
    lead = await add_lead(pool)
    await enroll(pool, lead, now)

    async with transaction(pool) as conn:
        [sent] = await emit_due_steps(conn, limit=100, topic=TOPIC, now=now)
        # The event's wake-up waits for the enrollment's row lock held by this transaction ...
        arriving = asyncio.create_task(add_event(pool, lead, "purchased"))
        await asyncio.sleep(0.3)
        assert not arriving.done()
    await arriving  # ... and then applies to the enrollment as the step left it.

    assert sent.step_position == 0
    assert (await enrollment(pool, lead))["resume_at"] == now + timedelta(days=2)
    await emit(pool, now + timedelta(seconds=30))
    state = await enrollment(pool, lead)
    assert (state["status"], state["exit_reason"]) == ("completed", "goal")
    assert await sent_positions(pool, lead) == [0]


# --- failures, many events, variants --------------------------------------------------------------------


async def test_a_failing_condition_marks_the_step_failed_and_other_leads_are_sent(pool: Pool, now: datetime) -> None:
    await apply(pool, sequence([step("pro-only", when="lead.metadata.plan == 'pro'"), step("next", "1d")]))
    broken, pro = await add_lead(pool), await add_lead(pool, metadata={"plan": "pro"})
    for lead in (broken, pro):
        await enroll(pool, lead, now)

    emitted = await emit(pool, now)

    assert [s.step_position for s in emitted] == [0]
    assert await sent_positions(pool, pro) == [0]
    [(kind, position, detail)] = await scheduler_events(pool, broken)
    assert (kind, position) == ("step.failed", 0)
    assert "Key not found" in detail
    assert (await enrollment(pool, broken))["next_step"] == 1


async def test_a_lead_with_many_events_is_judged_on_its_newest(pool: Pool, now: datetime) -> None:
    await apply(pool, sequence([step("hello"), step("vip", "1d", when="events.exists(e, e.type == 'purchased')")]))
    lead = await add_lead(pool)
    await enroll(pool, lead, now)
    await emit(pool, now)
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO events (lead_id, type, occurred_at)
               SELECT %s, 'viewed', now() - make_interval(secs => g) FROM generate_series(1, 5000) g""",
            (lead,),
        )
    await add_event(pool, lead, "purchased")

    assert [s.step_position for s in await emit(pool, now + timedelta(days=1))] == [1]


async def test_variants_are_chosen_per_lead_and_step_by_weight_and_recorded_on_the_message(
    pool: Pool, now: datetime
) -> None:
    resource = sequence(
        [
            step(
                "welcome",
                variants=[{"name": "a", "subject": "Your guide"}, {"name": "b", "weight": 3, "subject": "The guide"}],
            )
        ]
    )
    await apply(pool, resource)
    leads = [await add_lead(pool) for _ in range(40)]
    for lead in leads:
        await enroll(pool, lead, now)

    emitted = await emit(pool, now)

    rows = await fetch_all(pool.conninfo, "SELECT lead_id, sequence_id, variant FROM messages")
    rules = rules_of_spec(resource.spec)
    assert {r["variant"] for r in rows} == {"a", "b"}
    for row in rows:
        assert row["variant"] == choose_variant(row["lead_id"], row["sequence_id"], rules.steps[0])  # type: ignore[arg-type]
    async with transaction(pool) as conn:
        jobs = await load_jobs(conn, [s.message_id for s in emitted])
    subjects = {r["lead_id"]: {"a": "Your guide", "b": "The guide"}[str(r["variant"])] for r in rows}
    assert all(job.subject == subjects[job.lead_id] for job in jobs)


# --- revisions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "sent"), [("Latest", []), ("Pinned", [1])])
async def test_a_condition_edited_mid_flight_applies_as_the_revision_policy_says(
    pool: Pool, now: datetime, policy: str, sent: list[int]
) -> None:
    def version(when: str) -> Any:
        return sequence([step("hello"), step("reminder", "1d", when=when)], revisionPolicy=policy)

    await apply(pool, version("true"))
    lead = await add_lead(pool)
    await enroll(pool, lead, now)
    await emit(pool, now)
    await apply(pool, version("false"))

    emitted = await emit(pool, now + timedelta(days=1))

    assert [s.step_position for s in emitted] == sent


# --- apply-time checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("when", "events.exists(e, e.type == ", "at `$.spec.steps[1].when`"),
        ("when", "nosuch", "undeclared reference to 'nosuch'"),
        ("when", "events.exists(e, e.step == 'helo')", "no step named 'helo'"),
        ("waitFor", {"condition": "1 + 1", "timeout": "1d"}, "at `$.spec.steps[1].waitFor.condition`"),
    ],
)
def test_an_expression_that_does_not_compile_or_names_a_missing_step_is_refused_with_its_field(
    field: str, value: Any, says: str
) -> None:
    with pytest.raises(InvalidSequence, match=says.replace("[", r"\[").replace("$", r"\$")):
        sequence([step("hello"), step("reminder", "1d", **{field: value})])


def test_an_exit_when_that_does_not_compile_is_refused_with_its_field() -> None:
    with pytest.raises(InvalidSequence, match=r"at `\$\.spec\.exitWhen`"):
        sequence([step("hello")], exitWhen="lead.email == 'x'")


# --- stats ----------------------------------------------------------------------------------------------


async def test_daily_rollups_count_skips_exits_and_each_variants_sent_opens_and_clicks(
    pool: Pool, now: datetime
) -> None:
    resource = sequence(
        [
            step("hello", variants=[{"name": "a", "subject": "A"}, {"name": "b", "subject": "B"}]),
            step("reminder", "1d", when="!events.exists(e, e.type == 'opened' && e.step == 'hello')"),
            step("last", "1d"),
        ],
        exitWhen=GOAL,
    )
    await apply(pool, resource)
    leads = [await add_lead(pool) for _ in range(12)]
    for lead in leads:
        await enroll(pool, lead, now)
    await emit(pool, now)
    async with transaction(pool) as conn:
        # Every message sent; leads 0-5 open theirs (their reminder is skipped), lead 0 clicks too.
        await conn.execute("INSERT INTO events (message_id, lead_id, type) SELECT id, lead_id, 'sent' FROM messages")
        await conn.execute(
            """INSERT INTO events (message_id, lead_id, sequence_id, revision, step_position, type)
               SELECT id, lead_id, sequence_id, revision, step_position, kind FROM messages,
                      unnest(ARRAY['opened', 'clicked']) AS kind
               WHERE lead_id = ANY(%s) AND (kind = 'opened' OR lead_id = %s)""",
            (leads[:6], leads[0]),
        )
    await add_event(pool, leads[11], "purchased")
    day = now + timedelta(days=1)
    await emit(pool, day)
    async with transaction(pool) as conn:
        for rollup in {now.date(), day.date()}:
            await rollup_day(conn, rollup)
        report = await read_stats(conn, from_day=now.date(), to_day=day.date(), sequence_id=None)

    [stats] = report.sequences
    assert stats.totals.skipped == 6
    assert stats.totals.exited_goal == 1
    variants = [v for row in stats.rows for v in row.variants]
    expected = {}
    rules = rules_of_spec(resource.spec)
    seq = (await fetch_all(pool.conninfo, "SELECT id FROM sequences"))[0]["id"]
    for index, lead in enumerate(leads):
        arm = choose_variant(lead, seq, rules.steps[0])  # type: ignore[arg-type]
        sent, opens, clicks = expected.get(arm, (0, 0, 0))
        expected[arm] = (sent + 1, opens + (index < 6), clicks + (index == 0))
    assert {v.variant: (v.sent, v.unique_opens, v.unique_clicks) for v in variants} == expected
    assert all(v.open == round(v.unique_opens / v.sent, 4) for v in variants)


def test_a_wait_longer_than_a_year_is_refused_with_its_field() -> None:
    with pytest.raises(InvalidSequence, match=r"at `\$\.spec\.steps\[1\]\.waitFor\.timeout`"):
        sequence([step("hello"), step("reminder", "1d", waitFor={**WAIT, "timeout": "99999999999999999999d"})])
