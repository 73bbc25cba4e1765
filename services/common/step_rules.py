"""What happens to a due step of a reacting Sequence: exit, skip, wait, or send (with which variant).

One pure function, :func:`decide_step`, shared by the scheduler (facts from PostgreSQL) and by
``sequences preview --events`` (facts given on the command line), so a preview shows what the
scheduler will do. The rules of a revision are read from its stored spec (revisions are immutable,
so the parsed rules are cached by the caller).
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

import msgspec

from proto.sequence import SequenceSpec
from services.common.conditions import (
    CompiledCondition,
    ConditionError,
    ConditionFacts,
    compile_condition,
    evaluate,
)
from services.common.durations import parse_duration


@dataclass(frozen=True)
class VariantRule:
    name: str
    weight: int


@dataclass(frozen=True)
class WaitRule:
    condition: CompiledCondition
    timeout: timedelta
    send_on_timeout: bool


@dataclass(frozen=True)
class StepRules:
    name: str
    when: CompiledCondition | None
    wait_for: WaitRule | None
    variants: tuple[VariantRule, ...]

    @property
    def needs_facts(self) -> bool:
        return self.when is not None or self.wait_for is not None


@dataclass(frozen=True)
class RevisionRules:
    """The conditions and variants of one revision of a Sequence."""

    trigger_when: CompiledCondition | None
    exit_when: CompiledCondition | None
    steps: tuple[StepRules, ...]

    @property
    def reacts_to_events(self) -> bool:
        return self.exit_when is not None or any(step.wait_for is not None for step in self.steps)

    @property
    def has_rules(self) -> bool:
        return (
            self.trigger_when is not None
            or self.exit_when is not None
            or any(step.needs_facts or step.variants for step in self.steps)
        )

    @cached_property
    def names_lead(self) -> bool:
        """Whether any condition past enrollment reads ``lead`` (else its row is not even read)."""
        return any(c.reads_lead for step in (*self.steps, None) for c in self._decided_at(step))

    def needs_facts(self, position: int) -> bool:
        return self.exit_when is not None or (position < len(self.steps) and self.steps[position].needs_facts)

    def event_types_read(self, position: int) -> frozenset[str] | None:
        """The event types the conditions decided at the step at ``position`` can read (``exitWhen``,
        the step's ``when`` and ``waitFor``); None: any type."""
        return self._event_types_at[position] if position < len(self.steps) else self._event_types_at[-1]

    @cached_property
    def _event_types_at(self) -> tuple[frozenset[str] | None, ...]:
        # One entry per step, and one past the last (exitWhen alone); kept: asked for every due step.
        def union(conditions: list[CompiledCondition]) -> frozenset[str] | None:
            kinds: frozenset[str] = frozenset()
            for condition in conditions:
                if condition.reads_events is None:
                    return None
                kinds |= condition.reads_events
            return kinds

        return (*(union(self._decided_at(step)) for step in self.steps), union(self._decided_at(None)))

    def _decided_at(self, step: StepRules | None) -> list[CompiledCondition]:
        """The conditions decided at a due ``step`` (None: past the last step): ``exitWhen``, the step's
        ``when`` and ``waitFor`` (``trigger.when`` is decided at enrollment)."""
        candidates = [self.exit_when]
        if step is not None:
            candidates += [step.when, step.wait_for.condition if step.wait_for else None]
        return [c for c in candidates if c is not None]


def rules_of_spec(spec: SequenceSpec) -> RevisionRules:
    """The rules of a spec; raises ConditionError for an expression that does not compile (a stored
    revision always compiles: it was checked when applied)."""

    def compiled(source: str | None) -> CompiledCondition | None:
        return None if source is None else compile_condition(source)

    return RevisionRules(
        trigger_when=compiled(spec.trigger.when),
        exit_when=compiled(spec.exit_when),
        steps=tuple(
            StepRules(
                name=step.name,
                when=compiled(step.when),
                wait_for=None
                if step.wait_for is None
                else WaitRule(
                    compile_condition(step.wait_for.condition),
                    parse_duration(step.wait_for.timeout),
                    step.wait_for.on_timeout == "send",
                ),
                variants=tuple(VariantRule(v.name, v.weight) for v in step.variants),
            )
            for step in spec.steps
        ),
    )


def rules_of_stored_spec(spec_json: bytes | str) -> RevisionRules:
    """The rules of a revision's stored spec (``sequence_revisions.spec``)."""
    return rules_of_spec(msgspec.json.decode(spec_json, type=SequenceSpec))


def choose_variant(lead_id: uuid.UUID, sequence_id: uuid.UUID, step: StepRules) -> str | None:
    """The variant a lead gets for a step: deterministic per lead, Sequence and step name (the same lead
    always gets the same arm, across revisions), shared out by weight; None when the step has none."""
    if not step.variants:
        return None
    digest = hashlib.sha256(f"{lead_id}/{sequence_id}/{step.name}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % sum(v.weight for v in step.variants)
    for variant in step.variants:
        if point < variant.weight:
            return variant.name
        point -= variant.weight
    raise AssertionError("unreachable: the point is below the total weight")


class Action(enum.Enum):
    SEND = "send"
    SKIP = "skip"  # `when` false, or a wait that timed out with onTimeout skip
    WAIT = "wait"  # hold until wait_deadline (or an event)
    EXIT = "exit"  # exitWhen true: the enrollment ends with reason goal
    FAIL = "fail"  # a condition failed to evaluate: the step is marked failed and not sent
    RESTORE = "restore"  # woken by an event, nothing to do: back to the due time it had


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    wait_deadline: datetime | None = None


def decide_step(
    rules: RevisionRules,
    position: int,
    facts: ConditionFacts | None,
    *,
    now: datetime,
    woken_early: bool,
    wait_deadline: datetime | None,
) -> Decision:
    """What to do with the enrollment's step at ``position`` at ``now``.

    In order: ``exitWhen`` true ends the enrollment; an enrollment woken by an event before its due
    time with no wait in progress goes back to sleep; ``when`` false skips the step; ``waitFor`` sends
    when its condition holds, else starts or continues the wait until its deadline, then skips or
    sends as ``onTimeout`` says. A condition that fails to evaluate fails the step (never raises).
    """
    step = rules.steps[position]
    try:
        if rules.exit_when is not None and facts is not None and evaluate(rules.exit_when, facts):
            return Decision(Action.EXIT, "goal")
        if woken_early and wait_deadline is None:
            return Decision(Action.RESTORE)
        if step.when is not None and facts is not None and not evaluate(step.when, facts):
            return Decision(Action.SKIP, "when is false")
        wait = step.wait_for
        if wait is not None and facts is not None:
            if evaluate(wait.condition, facts):
                return Decision(Action.SEND, "waitFor holds")
            if wait_deadline is None:
                return Decision(Action.WAIT, "waiting", now + wait.timeout)
            if now < wait_deadline:
                return Decision(Action.WAIT, "waiting", wait_deadline)
            if wait.send_on_timeout:
                return Decision(Action.SEND, "waitFor timed out")
            return Decision(Action.SKIP, "waitFor timed out")
    except ConditionError as error:
        return Decision(Action.FAIL, str(error)[:2000])
    return Decision(Action.SEND)
