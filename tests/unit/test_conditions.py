"""Sequence conditions (services.common.conditions): compiled against the declared variables, bounded,
evaluated over one lead's facts only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.common.conditions import (
    MAX_COMPREHENSIONS,
    MAX_SOURCE_CHARS,
    ConditionError,
    ConditionFacts,
    EventFact,
    LeadFact,
    compile_condition,
    condition_problem,
    email_domain,
    evaluate,
)

NOW = datetime(2026, 1, 14, 10, 0, tzinfo=UTC)
LEAD = LeadFact(domain="example.de", source="website", accepted_at=NOW, first_name="Ada", locale="de-DE")


def facts(*events: EventFact) -> ConditionFacts:
    return ConditionFacts(LEAD, events, NOW)


def test_an_opened_event_of_the_named_step_makes_exists_true() -> None:
    condition = compile_condition("events.exists(e, e.type == 'opened' && e.step == 'hello')")
    assert evaluate(condition, facts(EventFact("opened", NOW, step="hello"))) is True
    assert evaluate(condition, facts(EventFact("opened", NOW, step="other"))) is False
    assert evaluate(condition, facts()) is False


def test_lead_fields_and_time_arithmetic_are_available() -> None:
    assert evaluate(compile_condition("lead.locale.startsWith('de') && lead.domain == 'example.de'"), facts())
    recent = compile_condition("events.exists(e, timestamp(e.at) > now - duration('1h'))")
    assert evaluate(recent, facts(EventFact("clicked", NOW - timedelta(minutes=5))))
    assert not evaluate(recent, facts(EventFact("clicked", NOW - timedelta(hours=2))))


def test_custom_event_properties_are_readable() -> None:
    condition = compile_condition("events.exists(e, e.type == 'purchased' && e.properties.total > 100)")
    assert evaluate(condition, facts(EventFact("purchased", NOW, properties={"total": 120})))


def test_the_lead_has_the_domain_of_the_address_never_the_address() -> None:
    assert email_domain("Ada@Example.DE") == "example.de"
    assert "email" in (condition_problem("lead.email == 'ada@example.de'") or "")
    assert "email" not in LEAD.as_cel()


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("nosuch == 1", "undeclared reference to 'nosuch'"),
        ("events.exists(e, e.type == ", "Syntax error"),
        ("1 + 1", "gives int, not bool"),
        ("lead.phone == '1'", "lead has no field phone"),
        ("", "empty"),
    ],
)
def test_a_bad_expression_is_refused_at_compile_time(source: str, says: str) -> None:
    with pytest.raises(ConditionError, match=says):
        compile_condition(source)


def test_expression_size_and_comprehensions_are_bounded() -> None:
    assert "characters long" in (condition_problem("true || " * (MAX_SOURCE_CHARS // 8 + 1) + "true") or "")
    nested = " && ".join(["events.exists(e, e.type == 'x')"] * (MAX_COMPREHENSIONS + 1))
    assert "comprehensions" in (condition_problem(nested) or "")
    # A macro name inside a string literal is not a comprehension.
    assert condition_problem("lead.source == '.exists(.all(.map(.filter(.exists(.all(.map('") is None


def test_a_failing_evaluation_is_a_condition_error_not_a_crash() -> None:
    with pytest.raises(ConditionError, match="Key not found"):
        evaluate(compile_condition("lead.metadata.plan == 'pro'"), facts())
