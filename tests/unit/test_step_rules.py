"""What a due step does (services.common.step_rules.decide_step) and which A/B variant a lead gets."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from proto.sequence import SequenceSpec
from services.common.conditions import ConditionFacts, EventFact, LeadFact, compile_condition, evaluate
from services.common.step_rules import Action, RevisionRules, choose_variant, decide_step, rules_of_spec

NOW = datetime(2026, 1, 14, 10, 0, tzinfo=UTC)
LEAD = LeadFact(domain="example.com", source="website", accepted_at=NOW)


def rules(**spec: Any) -> RevisionRules:
    step: dict[str, Any] = {"name": "s", "subject": "x", "text": "y", **spec.pop("step", {})}
    return rules_of_spec(msgspec.convert({"trigger": {"all": True}, "steps": [step], **spec}, SequenceSpec))


def facts(*types: str) -> ConditionFacts:
    return ConditionFacts(LEAD, [EventFact(t, NOW) for t in types], NOW)


def decide(revision: RevisionRules, the_facts: ConditionFacts, **kwargs: Any) -> Any:
    return decide_step(
        revision,
        0,
        the_facts,
        now=kwargs.get("now", NOW),
        woken_early=kwargs.get("woken_early", False),
        wait_deadline=kwargs.get("wait_deadline"),
    )


def test_exit_when_comes_before_everything_else() -> None:
    revision = rules(exitWhen="events.exists(e, e.type == 'purchased')", step={"when": "false"})
    assert decide(revision, facts("purchased")).action is Action.EXIT
    assert decide(revision, facts()).action is Action.SKIP


def test_an_early_wake_up_without_a_wait_goes_back_to_sleep() -> None:
    revision = rules(exitWhen="events.exists(e, e.type == 'purchased')")
    assert decide(revision, facts("opened"), woken_early=True).action is Action.RESTORE


def test_wait_for_starts_continues_and_times_out_as_on_timeout_says() -> None:
    wait = {"condition": "events.exists(e, e.type == 'clicked')", "timeout": "3d"}
    skip, send = rules(step={"waitFor": wait}), rules(step={"waitFor": {**wait, "onTimeout": "send"}})
    deadline = NOW + timedelta(days=3)

    started = decide(skip, facts())
    assert (started.action, started.wait_deadline) == (Action.WAIT, deadline)
    assert decide(skip, facts(), woken_early=True, wait_deadline=deadline).action is Action.WAIT
    assert decide(skip, facts("clicked"), wait_deadline=deadline).action is Action.SEND
    assert decide(skip, facts(), now=deadline, wait_deadline=deadline).action is Action.SKIP
    assert decide(send, facts(), now=deadline, wait_deadline=deadline).action is Action.SEND


def test_a_failing_condition_is_a_fail_decision_never_an_exception() -> None:
    decision = decide(rules(step={"when": "lead.metadata.plan == 'pro'"}), facts())
    assert decision.action is Action.FAIL
    assert "plan" in decision.reason


def test_a_guarded_condition_does_not_fail() -> None:
    condition = compile_condition("has(lead.metadata.plan) && lead.metadata.plan == 'pro'")
    assert evaluate(condition, facts()) is False


def test_variants_are_deterministic_and_shared_by_weight() -> None:
    step = rules(step={"variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]}).steps[0]
    sequence = uuid.uuid4()
    leads = [uuid.uuid4() for _ in range(4000)]

    shares = Counter(choose_variant(lead, sequence, step) for lead in leads)

    assert all(choose_variant(lead, sequence, step) == choose_variant(lead, sequence, step) for lead in leads[:50])
    assert set(shares) == {"a", "b"}
    assert 0.2 < shares["a"] / len(leads) < 0.3  # weight 1 of 4
    assert choose_variant(leads[0], sequence, rules().steps[0]) is None


def test_the_event_types_read_at_a_step_are_those_of_exit_when_and_the_steps_own_conditions() -> None:
    spec: dict[str, Any] = {
        "trigger": {"all": True},
        "exitWhen": "events.exists(e, e.type == 'purchased')",
        "steps": [
            {"name": "a", "subject": "x", "text": "y", "when": "!events.exists(e, e.type == 'opened')"},
            {
                "name": "b",
                "subject": "x",
                "text": "y",
                "waitFor": {"condition": "events.exists(e, e.type == 'clicked')", "timeout": "1d"},
            },
            {"name": "c", "subject": "x", "text": "y", "when": "size(events) < 10"},
            {"name": "d", "subject": "x", "text": "y", "when": "lead.source == 'web'"},
        ],
    }
    revision = rules_of_spec(msgspec.convert(spec, SequenceSpec))
    assert revision.event_types_read(0) == {"purchased", "opened"}
    assert revision.event_types_read(1) == {"purchased", "clicked"}
    assert revision.event_types_read(2) is None
    assert revision.event_types_read(3) == {"purchased"}
    assert revision.event_types_read(4) == {"purchased"}  # past the last step: exitWhen alone
    assert revision.names_lead
    assert not rules().names_lead
