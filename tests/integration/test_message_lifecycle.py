"""Every transition of a message on a real PostgreSQL, the refused ones included: a transition from a
status it does not allow changes nothing, announces nothing and reports nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from proto.messages import EmailDeadLettered, EmailDispatch, EmailEvent
from services.common.db import transaction
from services.common.events import MessageRef
from services.common.message_lifecycle import transitions as lifecycle
from services.common.message_lifecycle.announcements import Attempt
from services.common.message_lifecycle.states import RefusedTransition, Status
from tests.support.jobs import Pool, job_context, job_settings, outbox_messages, queued_message
from tests.support.platform import apply_examples, fetch_all

pytestmark = pytest.mark.integration

EVENTS, DLQ, DISPATCH = "email.events", "email.dispatch.dlq", "email.dispatch"
# A row in each status, as the constraints want it (retrying has a due time, sent a sent_at).
SET_STATUS = {
    "queued": "status = 'queued'",
    "sending": "status = 'sending', attempts = attempts + 1, sending_at = now()",
    "retrying": "status = 'retrying', attempts = attempts + 1, next_attempt_at = now(), last_error = '451 later'",
    "sent": "status = 'sent', attempts = attempts + 1, sent_at = now()",
    "dead": "status = 'dead', attempts = attempts + 1, last_error = '550 no'",
    "skipped": "status = 'skipped'",
}


@pytest.fixture
async def pool(migrated_database_url: str) -> AsyncIterator[Pool]:
    await apply_examples(migrated_database_url)
    async with job_context(job_settings(migrated_database_url)) as ctx:
        yield ctx.pool


async def message_in(pool: Pool, status: str) -> uuid.UUID:
    """A message of the welcome example in ``status``, with an empty outbox."""
    message_id = await queued_message(pool)
    async with transaction(pool) as conn:
        # Test-owned literals only (SET_STATUS).
        await conn.execute(f"UPDATE messages SET {SET_STATUS[status]} WHERE id = %s".encode(), (message_id,))  # noqa: S608
        await conn.execute("DELETE FROM outbox")
    return message_id


async def row_of(pool: Pool, message_id: uuid.UUID) -> dict[str, object]:
    [row] = await fetch_all(pool.conninfo, "SELECT status, attempts, replays FROM messages WHERE id = %s", message_id)
    return row


async def outbox_count(pool: Pool) -> int:
    [row] = await fetch_all(pool.conninfo, "SELECT count(*) AS n FROM outbox")
    return int(row["n"])  # type: ignore[call-overload]


async def test_create_queues_the_message_with_the_command_of_its_first_attempt(pool: Pool) -> None:
    message_id = await queued_message(pool)

    assert await row_of(pool, message_id) == {"status": "queued", "attempts": 0, "replays": 0}
    [command] = await outbox_messages(pool.conninfo, DISPATCH)
    assert isinstance(command, EmailDispatch)
    assert (command.message_id, command.attempt) == (message_id, 1)
    assert command.id == uuid.uuid5(message_id, f"{message_id}/0.1/dispatch")


async def test_claim_moves_queued_to_sending_once_counting_the_attempt(pool: Pool) -> None:
    message_id = await message_in(pool, "queued")
    async with transaction(pool) as conn:
        claimed = await lifecycle.claim(conn, message_id)
        again = await lifecycle.claim(conn, message_id)  # a second replica got the command too

    assert claimed is not None
    assert (claimed.attempt, claimed.life) == (1, 0)
    assert again is None
    assert await row_of(pool, message_id) == {"status": "sending", "attempts": 1, "replays": 0}


async def test_claim_takes_a_retry_only_once_it_is_due(pool: Pool) -> None:
    message_id = await message_in(pool, "retrying")
    async with transaction(pool) as conn:
        await conn.execute(
            "UPDATE messages SET next_attempt_at = now() + interval '1 hour' WHERE id = %s", (message_id,)
        )
        assert await lifecycle.claim(conn, message_id) is None
        await conn.execute(
            "UPDATE messages SET next_attempt_at = now() - interval '1 second' WHERE id = %s", (message_id,)
        )
        claimed = await lifecycle.claim(conn, message_id)

    assert claimed is not None
    assert claimed.attempt == 2


@pytest.mark.parametrize("status", ["sending", "sent", "dead", "skipped"])
async def test_claim_is_refused_from_any_other_status(pool: Pool, status: str) -> None:
    message_id = await message_in(pool, status)
    before = await row_of(pool, message_id)
    async with transaction(pool) as conn:
        assert await lifecycle.claim(conn, message_id) is None
    assert await row_of(pool, message_id) == before


async def _claimed(pool: Pool) -> Attempt:
    message_id = await message_in(pool, "queued")
    [attempt] = await _attempts(pool, [message_id])
    return attempt


async def _attempts(pool: Pool, ids: list[uuid.UUID]) -> list[Attempt]:
    """Claim ``ids``; the attempts as the dispatcher would record them (step names read back)."""
    async with transaction(pool) as conn:
        claimed, _ = await lifecycle.record_and_claim(conn, [], ids, events_topic=EVENTS, dlq_topic=DLQ)
        rows = await fetch_all(
            pool.conninfo,
            "SELECT m.id, m.lead_id, m.sequence_id, m.revision, m.step_position, m.enrollment_id, st.name AS step"
            " FROM messages m JOIN sequence_steps st ON (st.sequence_id, st.revision, st.position)"
            " = (m.sequence_id, m.revision, m.step_position) WHERE m.id = ANY(%s)",
            ids,
        )
    by_id = {row["id"]: row for row in rows}
    return [
        Attempt(
            MessageRef(
                i,
                by_id[i]["lead_id"],  # type: ignore[arg-type]
                by_id[i]["sequence_id"],  # type: ignore[arg-type]
                by_id[i]["revision"],  # type: ignore[arg-type]
                by_id[i]["step_position"],  # type: ignore[arg-type]
                str(by_id[i]["step"]),
            ),
            by_id[i]["enrollment_id"],  # type: ignore[arg-type]
            claimed[i].life,
            claimed[i].attempt,
        )
        for i in ids
    ]


@pytest.mark.parametrize(
    ("status", "event", "dead_letters"),
    [
        (Status.SENT, "sent", 0),
        (Status.RETRYING, "failed", 0),
        (Status.DEAD, "dead", 1),
        (Status.SKIPPED, "skipped", 0),
    ],
)
async def test_recording_an_outcome_moves_sending_to_it_with_its_event(
    pool: Pool, status: Status, event: str, dead_letters: int
) -> None:
    attempt = await _claimed(pool)
    retry_in = timedelta(minutes=1) if status == Status.RETRYING else None
    async with transaction(pool) as conn:
        written = await lifecycle.record(
            conn, lifecycle.Outcome(attempt, status, "250 ok", retry_in), events_topic=EVENTS, dlq_topic=DLQ
        )
        again = await lifecycle.record(
            conn, lifecycle.Outcome(attempt, status, "250 ok", retry_in), events_topic=EVENTS, dlq_topic=DLQ
        )

    assert (written, again) == (True, False)
    assert (await row_of(pool, attempt.message_id))["status"] == status
    [announced] = await outbox_messages(pool.conninfo, EVENTS)
    assert isinstance(announced, EmailEvent)
    assert (announced.event, announced.id) == (event, uuid.uuid5(attempt.message_id, attempt.key(event)))
    assert len(await outbox_messages(pool.conninfo, DLQ)) == dead_letters


@pytest.mark.parametrize("status", [Status.QUEUED, Status.SENDING])
async def test_recording_an_outcome_that_does_not_end_an_attempt_is_refused(pool: Pool, status: Status) -> None:
    attempt = await _claimed(pool)
    async with transaction(pool) as conn:
        with pytest.raises(RefusedTransition):
            await lifecycle.record(conn, lifecycle.Outcome(attempt, status, "?"), events_topic=EVENTS, dlq_topic=DLQ)
    assert (await row_of(pool, attempt.message_id))["status"] == "sending"
    assert await outbox_count(pool) == 0


async def test_one_group_records_outcomes_and_claims_but_writes_nothing_for_a_message_no_longer_sending(
    pool: Pool,
) -> None:
    sent_id, reclaimed_id, dead_id, next_id = [await message_in(pool, "queued") for _ in range(4)]
    sent, reclaimed, dead = await _attempts(pool, [sent_id, reclaimed_id, dead_id])
    async with transaction(pool) as conn:
        # The reconcile job took one back meanwhile (a message stuck in `sending` re-queued).
        await lifecycle.requeue_stuck(conn, [reclaimed_id], dispatch_topic=DISPATCH)
        await conn.execute("DELETE FROM outbox")
    outcomes = [
        lifecycle.Outcome(sent, Status.SENT, "250 ok"),
        lifecycle.Outcome(reclaimed, Status.SENT, "250 ok"),
        lifecycle.Outcome(dead, Status.DEAD, "550 no such user"),
    ]
    async with transaction(pool) as conn:
        claimed_next, recorded = await lifecycle.record_and_claim(
            conn, outcomes, [next_id], events_topic=EVENTS, dlq_topic=DLQ
        )

    assert recorded == 2
    assert claimed_next[next_id].attempt == 1
    assert [(await row_of(pool, i))["status"] for i in (sent_id, reclaimed_id, dead_id, next_id)] == [
        "sent",
        "queued",
        "dead",
        "sending",
    ]
    events = await fetch_all(pool.conninfo, "SELECT message_id, type FROM events ORDER BY id")
    assert events == [{"message_id": sent_id, "type": "sent"}, {"message_id": dead_id, "type": "dead"}]
    outbox = await fetch_all(pool.conninfo, "SELECT topic, key FROM outbox ORDER BY id")
    assert sorted((row["topic"], row["key"]) for row in outbox) == sorted(
        [(EVENTS, str(sent_id)), (EVENTS, str(dead_id)), (DLQ, str(dead_id))]
    )


@pytest.mark.parametrize(("transition", "status"), [("requeue_retry", "retrying"), ("requeue_stuck", "sending")])
async def test_a_requeue_moves_to_queued_with_the_command_of_the_next_attempt(
    pool: Pool, transition: str, status: str
) -> None:
    message_id = await message_in(pool, status)
    async with transaction(pool) as conn:
        moved = await getattr(lifecycle, transition)(conn, [message_id], dispatch_topic=DISPATCH)

    assert moved == [message_id]
    assert await row_of(pool, message_id) == {"status": "queued", "attempts": 1, "replays": 0}
    [command] = await outbox_messages(pool.conninfo, DISPATCH)
    assert isinstance(command, EmailDispatch)
    assert (command.attempt, command.id) == (2, uuid.uuid5(message_id, f"{message_id}/0.2/dispatch"))


async def test_give_up_moves_retrying_to_dead_with_its_event_and_dead_letter(pool: Pool) -> None:
    message_id = await message_in(pool, "retrying")
    async with transaction(pool) as conn:
        moved = await lifecycle.give_up(conn, [message_id], max_attempts=1, events_topic=EVENTS, dlq_topic=DLQ)

    assert moved == [message_id]
    assert (await row_of(pool, message_id))["status"] == "dead"
    [letter] = await outbox_messages(pool.conninfo, DLQ)
    assert isinstance(letter, EmailDeadLettered)
    assert letter.reason == "attempt cap of 1 reached; last error: 451 later"
    assert letter.id == uuid.uuid5(message_id, f"{message_id}/0.1/dead_lettered")
    [event] = await outbox_messages(pool.conninfo, EVENTS)
    assert isinstance(event, EmailEvent)
    assert event.event == "dead"


async def test_republish_keeps_a_queued_message_queued_with_its_command_again(pool: Pool) -> None:
    message_id = await message_in(pool, "queued")
    async with transaction(pool) as conn:
        moved = await lifecycle.republish(conn, [message_id], dispatch_topic=DISPATCH)

    assert moved == [message_id]
    [command] = await outbox_messages(pool.conninfo, DISPATCH)
    assert isinstance(command, EmailDispatch)
    # The same command as the one that got lost: same attempt, same id.
    assert command.id == uuid.uuid5(message_id, f"{message_id}/0.1/dispatch")


async def test_replay_moves_dead_to_queued_as_a_new_life_with_fresh_attempts(pool: Pool) -> None:
    message_id = await message_in(pool, "dead")
    async with transaction(pool) as conn:
        moved = await lifecycle.replay(conn, [message_id], dispatch_topic=DISPATCH, events_topic=EVENTS)

    assert moved == [message_id]
    assert await row_of(pool, message_id) == {"status": "queued", "attempts": 0, "replays": 1}
    [command] = await outbox_messages(pool.conninfo, DISPATCH)
    assert isinstance(command, EmailDispatch)
    assert (command.attempt, command.id) == (1, uuid.uuid5(message_id, f"{message_id}/1.1/dispatch"))
    [event] = await outbox_messages(pool.conninfo, EVENTS)
    assert isinstance(event, EmailEvent)
    assert event.event == "replayed"


async def test_a_replayed_message_that_dies_again_is_announced_again(pool: Pool) -> None:
    first = await _claimed(pool)
    outcome = lifecycle.Outcome(first, Status.DEAD, "550 no")
    async with transaction(pool) as conn:
        await lifecycle.record(conn, outcome, events_topic=EVENTS, dlq_topic=DLQ)
        await lifecycle.replay(conn, [first.message_id], dispatch_topic=DISPATCH, events_topic=EVENTS)
    [second] = await _attempts(pool, [first.message_id])
    async with transaction(pool) as conn:
        await lifecycle.record(
            conn, lifecycle.Outcome(second, Status.DEAD, "550 no"), events_topic=EVENTS, dlq_topic=DLQ
        )

    assert (first.attempt, second.attempt, second.life) == (1, 1, 1)
    letters = await outbox_messages(pool.conninfo, DLQ)
    assert len({letter.id for letter in letters}) == 2
    dead_events = await fetch_all(pool.conninfo, "SELECT count(*) AS n FROM events WHERE type = 'dead'")
    assert dead_events == [{"n": 2}]


async def test_cancel_skips_the_queued_and_retrying_messages_of_a_sequence_only(pool: Pool) -> None:
    ids = {status: await message_in(pool, status) for status in ("queued", "retrying", "sending", "sent")}
    [row] = await fetch_all(pool.conninfo, "SELECT sequence_id FROM messages WHERE id = %s", ids["queued"])
    async with transaction(pool) as conn:
        cancelled = await lifecycle.cancel_sequence_messages(conn, row["sequence_id"])  # type: ignore[arg-type]

    assert cancelled == 2
    assert {s: (await row_of(pool, i))["status"] for s, i in ids.items()} == {
        "queued": "skipped",
        "retrying": "skipped",
        "sending": "sending",
        "sent": "sent",
    }


# Each batch transition from each status it does not allow: nothing moves, nothing is announced.
REFUSED = (
    [("requeue_retry", status) for status in ("queued", "sending", "sent", "dead", "skipped")]
    + [("give_up", status) for status in ("queued", "sending", "sent", "dead", "skipped")]
    + [("republish", status) for status in ("sending", "retrying", "sent", "dead", "skipped")]
    + [("requeue_stuck", status) for status in ("queued", "retrying", "sent", "dead", "skipped")]
    + [("replay", status) for status in ("queued", "sending", "retrying", "sent", "skipped")]
)


@pytest.mark.parametrize(("transition", "status"), REFUSED)
async def test_a_transition_from_a_status_it_does_not_allow_changes_nothing(
    pool: Pool, transition: str, status: str
) -> None:
    message_id = await message_in(pool, status)
    before = await row_of(pool, message_id)
    async with transaction(pool) as conn:
        if transition == "give_up":
            moved = await lifecycle.give_up(conn, [message_id], max_attempts=1, events_topic=EVENTS, dlq_topic=DLQ)
        elif transition == "replay":
            moved = await lifecycle.replay(conn, [message_id], dispatch_topic=DISPATCH, events_topic=EVENTS)
        else:
            moved = await getattr(lifecycle, transition)(conn, [message_id], dispatch_topic=DISPATCH)

    assert moved == []
    assert await row_of(pool, message_id) == before
    assert await outbox_count(pool) == 0
