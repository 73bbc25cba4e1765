"""Which events a condition can read (services.common.condition_reads), from cel-cpp's checked AST.

The property that matters is soundness: evaluating a condition over only the events of the types it
is said to read gives exactly the value (or the error) it gives over all of them. It is checked here
against the real evaluator over many generated histories, not only by looking at the sets.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from services.common.condition_reads import event_types_read, names_variable
from services.common.conditions import (
    ConditionError,
    ConditionFacts,
    EventFact,
    LeadFact,
    compile_condition,
    evaluate,
)

NOW = datetime(2026, 1, 14, 10, 0, tzinfo=UTC)
LEAD = LeadFact(domain="example.de", source="website", accepted_at=NOW, locale="de-DE")

READS = [
    ("events.exists(e, e.type == 'purchased')", {"purchased"}),
    ("!events.exists(e, 'purchased' == e.type)", {"purchased"}),
    ("events.exists(e, e.type == 'opened' && e.step == 'hello')", {"opened"}),
    ("events.exists(e, e.type == 'opened' || e.type == 'clicked')", {"opened", "clicked"}),
    ("events.exists(e, e.type in ['opened', 'clicked'] && e.step == 'hello')", {"opened", "clicked"}),
    ("events.exists(e, !(e.type != 'clicked') && e.step == 'hello')", {"clicked"}),
    ("events.all(e, e.type != 'bounced')", {"bounced"}),
    ("events.all(e, e.type != 'bounced' || e.step == 'hello')", {"bounced"}),
    ("events.exists_one(e, e.type == 'clicked')", {"clicked"}),
    ("size(events.filter(e, e.type == 'clicked')) > 1", {"clicked"}),
    ("events.map(e, e.type == 'clicked', e.step).exists(s, s == 'hello')", {"clicked"}),
    (
        "events.exists(e, e.type == 'clicked' && events.exists(f, f.type == 'opened' && f.at < e.at))",
        {"clicked", "opened"},
    ),
    ("events.exists(e, e.type == 'purchased') || lead.locale.startsWith('fr')", {"purchased"}),
    ("lead.locale.startsWith('de')", set()),
    ("has(lead.utm.campaign)", set()),
]

READS_EVERYTHING = [
    "size(events) > 2",
    "events.exists(e, e.step == 'hello')",
    "events.exists(e, e.type == 'opened' || e.step == 'hello')",
    "events.all(e, e.type == 'opened')",
    "events.map(e, e.type).exists(t, t == 'opened')",
    "events[0].type == 'opened'",
    "events.exists(e, e.type.startsWith('op'))",
    "[1, 2].exists(events, events == 1) || size(events) == 0",
]


@pytest.mark.parametrize(("source", "types"), READS)
def test_a_condition_reads_only_the_types_it_compares_with(source: str, types: set[str]) -> None:
    assert compile_condition(source).reads_events == frozenset(types)


@pytest.mark.parametrize("source", READS_EVERYTHING)
def test_any_other_use_of_events_reads_every_event(source: str) -> None:
    assert compile_condition(source).reads_events is None


def test_reading_lead_and_now_comes_from_the_ast_not_the_text() -> None:
    quoted = compile_condition("events.exists(e, e.step == 'lead' && e.type == 'now')")
    assert not quoted.reads_lead
    assert not quoted.reads_now
    assert compile_condition("lead.source == 'web'").reads_lead
    assert compile_condition("events.exists(e, timestamp(e.at) > now - duration('1h'))").reads_now


def test_bytes_that_are_not_a_checked_expression_read_everything() -> None:
    assert event_types_read(b"\x12\x05garbage") is None
    assert event_types_read(b"\xff") is None
    assert names_variable(b"\x0a", "lead") is True


TYPES = ["sent", "opened", "clicked", "purchased", "bounced"]
STEPS = ["hello", "reminder", ""]


def _history(rng: random.Random) -> list[EventFact]:
    events = [
        EventFact(rng.choice(TYPES), NOW - timedelta(minutes=rng.randrange(10_000)), step=rng.choice(STEPS))
        for _ in range(rng.randrange(0, 7))
    ]
    return sorted(events, key=lambda e: e.at, reverse=True)


def _outcome(source: str, events: list[EventFact]) -> object:
    try:
        return evaluate(compile_condition(source), ConditionFacts(LEAD, events, NOW))
    except ConditionError as error:
        return ("error", str(error))


FAILING_ON_CLICKS = "events.exists(e, e.type == 'clicked' && e.nope)"


@pytest.mark.parametrize("source", [source for source, _ in READS] + [FAILING_ON_CLICKS])
def test_dropping_the_events_a_condition_does_not_read_never_changes_its_value(source: str) -> None:
    read = compile_condition(source).reads_events
    assert read is not None
    rng = random.Random(source)
    outcomes = set()
    for _ in range(400):
        history = _history(rng)
        full = _outcome(source, history)
        assert _outcome(source, [e for e in history if e.type in read]) == full, history
        outcomes.add(repr(full))
    if read:
        assert len(outcomes) > 1, "the histories never changed the value: the check would prove nothing"


def test_a_condition_without_the_events_it_reads_is_decided_once_with_the_same_value_or_error() -> None:
    goal = compile_condition("events.exists(e, e.type == 'purchased')")
    unrelated = [EventFact("sent", NOW), EventFact("opened", NOW, step="hello")]
    assert evaluate(goal, ConditionFacts(None, unrelated, NOW)) is False
    assert evaluate(goal, ConditionFacts(None, [EventFact("purchased", NOW), *unrelated], NOW)) is True
    failing = compile_condition("events[0].type == 'x'")
    with pytest.raises(ConditionError, match="failed"):
        evaluate(failing, ConditionFacts(None, [], NOW))
    with pytest.raises(ConditionError, match="failed"):
        evaluate(failing, ConditionFacts(None, [], NOW))  # the remembered outcome is the error too
