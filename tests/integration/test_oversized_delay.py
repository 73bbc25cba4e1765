"""A step delay beyond the 365-day maximum: refused when a Sequence is applied, and harmless to the
scheduler when such a row got into the database another way (defence in depth: one bad Sequence never
blocks enrollments into the others)."""

from __future__ import annotations

import uuid

import psycopg_pool
import pytest

from operators.sequence.reconcile import reconcile_sequence
from services.common.db import Connection, transaction
from services.common.sequence_templates import no_config_maps
from services.common.sequences import InvalidSequence, apply_sequence, parse_sequence_document, sequence_id
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]


def two_steps(name: str, second_delay: str = "2d") -> dict[str, object]:
    return {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": name},
        "spec": {
            "trigger": {"sources": ["website"]},
            "steps": [
                {"name": "first", "delay": "0s", "subject": "Hi", "text": "Hello"},
                {"name": "second", "delay": second_delay, "subject": "Again", "text": "Again"},
            ],
        },
    }


async def new_lead(pool: Pool) -> uuid.UUID:
    lead_id = uuid.uuid4()
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
               VALUES (%s, %s, %s, 'website', true)""",
            (lead_id, f"{lead_id}@example.com", f"{lead_id}@example.com"),
        )
    return lead_id


@pytest.mark.parametrize("delay", ["999999999d", "9" * 31 + "s", "366d"])
def test_a_sequence_with_a_delay_beyond_365_days_is_refused_naming_the_field(delay: str) -> None:
    with pytest.raises(InvalidSequence, match=r"longer than the maximum delay of a step, 365d") as raised:
        parse_sequence_document(two_steps("too-long", delay), "too-long.yaml")

    assert "`$.spec.steps[1].delay`" in str(raised.value)


async def test_a_stored_oversized_delay_does_not_block_enrollments_into_other_sequences(pool: Pool) -> None:
    async with transaction(pool) as conn:
        await apply_sequence(conn, parse_sequence_document(two_steps("healthy"), "healthy"))
        await apply_sequence(conn, parse_sequence_document(two_steps("corrupt"), "corrupt"))
        # Written around the validation (an older version, a hand edit): both steps wait ~10^30 s.
        await conn.execute(
            "UPDATE sequence_steps SET delay_s = 999999999::bigint * 86400 WHERE sequence_id = %s",
            (sequence_id("default", "corrupt"),),
        )
    lead = await new_lead(pool)

    async with transaction(pool) as conn:
        enrolled = await enroll_lead(conn, lead)

    assert len(enrolled) == 2
    rows = await fetch_all(
        pool.conninfo,
        """SELECT s.name, e.next_run_at < now() + interval '366 days' AS within_a_year
           FROM enrollments e JOIN sequences s ON s.id = e.sequence_id ORDER BY s.name""",
    )
    assert rows == [{"name": "corrupt", "within_a_year": True}, {"name": "healthy", "within_a_year": True}]


async def test_a_stored_oversized_delay_does_not_block_emitting_due_steps(pool: Pool) -> None:
    async with transaction(pool) as conn:
        await apply_sequence(conn, parse_sequence_document(two_steps("corrupt-next"), "corrupt-next"))
        await conn.execute(
            "UPDATE sequence_steps SET delay_s = 999999999::bigint * 86400 WHERE sequence_id = %s AND position = 1",
            (sequence_id("default", "corrupt-next"),),
        )
    lead = await new_lead(pool)
    async with transaction(pool) as conn:
        await enroll_lead(conn, lead)

    async with transaction(pool) as conn:
        emitted = await emit_due_steps(conn, limit=10, topic="email.dispatch")

    assert [e.step_position for e in emitted] == [0]
    [state] = await fetch_all(
        pool.conninfo, "SELECT next_step, next_run_at < now() + interval '366 days' AS capped FROM enrollments"
    )
    assert state == {"next_step": 1, "capped": True}


async def test_the_operator_reports_an_oversized_delay_as_invalid_with_a_warning(pool: Pool) -> None:
    # What a CRD installed without the delay rule lets through reaches reconcile: refused there.
    obj = {**two_steps("too-long", "9" * 31 + "s"), "status": {}}
    obj["metadata"] = {"name": "too-long", "namespace": "marketing", "generation": 1, "uid": "u-1"}

    async with transaction(pool) as conn:
        result = await reconcile_sequence(conn, obj, no_config_maps)

    valid = next(c for c in result.status["conditions"] if c["type"] == "Valid")
    assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
    assert "longer than the maximum delay of a step, 365d - at `$.spec.steps[1].delay`" in valid["message"]
    assert result.event is not None
    assert (result.event.type, result.event.reason) == ("Warning", "InvalidSpec")
    assert await fetch_all(pool.conninfo, "SELECT id FROM sequences") == []
