"""The message state machine as data: which transitions exist, which are refused, the retry decision
and the id scheme of what transitions announce."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from services.common.events import MessageRef
from services.common.message_lifecycle.announcements import Attempt, dead_letter, dispatch_command, event
from services.common.message_lifecycle.states import (
    REPLAY,
    TRANSITIONS,
    RefusedTransition,
    Status,
    allowed,
    decide_after_failure,
    has_attempts_left,
    outcome_transition,
)


def test_sent_and_skipped_are_final() -> None:
    assert [t.name for t in TRANSITIONS if {Status.SENT, Status.SKIPPED} & t.sources] == []


def test_dead_leaves_only_by_replay_to_queued() -> None:
    assert [t for t in TRANSITIONS if Status.DEAD in t.sources] == [REPLAY]
    assert REPLAY.target == Status.QUEUED


def test_sending_is_entered_only_by_the_claim_from_queued_or_retrying() -> None:
    [claim] = [t for t in TRANSITIONS if t.target == Status.SENDING]
    assert (claim.name, claim.sources) == ("claim", {Status.QUEUED, Status.RETRYING})


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (Status.SENT, Status.QUEUED),
        (Status.DEAD, Status.SENDING),
        (Status.SENT, Status.SENDING),
        (Status.SKIPPED, Status.QUEUED),
        (Status.QUEUED, Status.SENT),
        (Status.RETRYING, Status.SENT),
    ],
)
def test_refused_transitions_have_no_transition(source: Status, target: Status) -> None:
    assert allowed(source, target) == []


def test_every_status_is_reachable_from_creation() -> None:
    reached, frontier = {Status.QUEUED}, [Status.QUEUED]
    while frontier:
        source = frontier.pop()
        for t in TRANSITIONS:
            if source in t.sources and t.target not in reached:
                reached.add(t.target)
                frontier.append(t.target)
    assert reached == set(Status)


@pytest.mark.parametrize("status", ["queued", "sending", "bogus"])
def test_an_attempt_cannot_end_in_a_status_that_is_not_an_outcome(status: str) -> None:
    with pytest.raises(RefusedTransition, match=status):
        outcome_transition(status)


def test_a_permanent_failure_is_dead_at_once() -> None:
    decision = decide_after_failure(
        "550 no", permanent=True, attempts=1, max_attempts=3, base_delay_s=60, max_delay_s=600
    )
    assert (decision.status, decision.reason, decision.retry_in) == (Status.DEAD, "550 no", None)


def test_a_transient_failure_retries_until_the_attempt_cap() -> None:
    retry = decide_after_failure("451", permanent=False, attempts=2, max_attempts=3, base_delay_s=60, max_delay_s=600)
    spent = decide_after_failure("451", permanent=False, attempts=3, max_attempts=3, base_delay_s=60, max_delay_s=600)
    assert retry.status == Status.RETRYING
    assert retry.retry_in is not None
    assert 1 <= retry.retry_in.total_seconds() <= 120
    assert (spent.status, spent.reason) == (Status.DEAD, "451 (after 3 attempts)")
    assert [has_attempts_left(n, 3) for n in (0, 2, 3, 4)] == [True, True, False, False]


def _attempt(life: int, attempt: int) -> Attempt:
    message = uuid.UUID("7d9f5a52-5f0e-4d67-9f43-3c1f0a8f6c11")
    return Attempt(MessageRef(message, uuid.uuid4(), uuid.uuid4(), 1, 0, "hello"), uuid.uuid4(), life, attempt)


def test_the_same_transition_of_the_same_attempt_has_the_same_ids() -> None:
    assert dispatch_command(_attempt(0, 1)).id == dispatch_command(_attempt(0, 1)).id
    assert dead_letter(_attempt(0, 3), "x").id == dead_letter(_attempt(0, 3), "y").id
    assert event(_attempt(0, 1), "sent").dedupe_key == f"{_attempt(0, 1).message_id}/0.1/sent"


def test_attempts_and_lives_never_share_an_id() -> None:
    ids = {dispatch_command(_attempt(life, n)).id for life in range(3) for n in range(1, 4)}
    ids |= {dead_letter(_attempt(life, n), "x").id for life in range(3) for n in range(1, 4)}
    assert len(ids) == 18
    assert _attempt(0, 1).message_id not in ids  # never the message id, the scheme before this one


def test_no_module_outside_the_lifecycle_writes_a_message_row() -> None:
    """Every status write goes through services/common/message_lifecycle: no other module of the services
    or the operator updates or inserts ``messages`` rows itself (reading them is fine)."""
    root = Path(__file__).resolve().parents[2]
    lifecycle = root / "services" / "common" / "message_lifecycle"
    writes = re.compile(r"\b(UPDATE\s+messages|INSERT\s+INTO\s+messages)\b", re.IGNORECASE)
    offenders = [
        str(path.relative_to(root))
        for package in ("services", "operators")
        for path in (root / package).rglob("*.py")
        if lifecycle not in path.parents and writes.search(path.read_text())
    ]
    assert offenders == []
