"""Sequence conditions: CEL expressions over one lead and that lead's events.

A Sequence's ``trigger.when``, ``exitWhen``, a step's ``when`` and ``waitFor.condition`` are CEL
(the language of Kubernetes' own validation rules), compiled by ``cel-expr-python`` (Google's CEL
runtime, cel-cpp underneath) against declared variables, so a typo in a name fails when the Sequence
is applied, not when a lead reaches the step. The environment of one evaluation is built only from
one lead's row and that lead's events (:class:`ConditionFacts`): a condition cannot see another lead,
and ``lead`` carries the address's domain, never the address.

Variables:

* ``lead``: ``domain``, ``first_name``, ``last_name``, ``source``, ``tags``, ``utm``, ``locale``,
  ``timezone``, ``metadata``, ``accepted_at`` (RFC 3339 text; ``timestamp(lead.accepted_at)``).
* ``events``: the lead's events, newest first, at most :data:`MAX_EVENTS`; each has ``type``,
  ``step``, ``sequence``, ``variant`` (``""`` where none), ``automated``, ``at`` (RFC 3339 text) and
  ``properties`` (a map; custom events' properties).
* ``now``: a timestamp, the scheduler's clock at evaluation.

Bounds: an expression is at most :data:`MAX_SOURCE_CHARS` long with at most
:data:`MAX_COMPREHENSIONS` comprehension macros (``exists``, ``all``, ``map``, ``filter``,
``exists_one``), and sees at most :data:`MAX_EVENTS` events, so the cost of one evaluation is bounded
by roughly ``MAX_EVENTS ** nesting`` steps. A failing evaluation is a :class:`ConditionError`, a value
the caller records, never a crash.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from cel_expr_python import cel

from services.common.condition_reads import event_types_read, names_variable

MAX_SOURCE_CHARS = 2048
MAX_COMPREHENSIONS = 6
MAX_EVENTS = 1000

LEAD_FIELDS = frozenset(
    {"domain", "first_name", "last_name", "source", "tags", "utm", "locale", "timezone", "metadata", "accepted_at"}
)
EVENT_FIELDS = ("type", "step", "sequence", "variant", "automated", "at", "properties")

_COMPREHENSION = re.compile(r"\.\s*(exists_one|exists|all|map|filter)\s*\(")
_LEAD_FIELD = re.compile(r"\blead\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")

# One environment for every condition: maps of dynamic values (a lead's metadata and an event's
# properties are free-form JSON), so field names inside them are checked at evaluation.
_ENVIRONMENT = cel.NewEnv(
    variables={
        "lead": cel.Type.Map(cel.Type.STRING, cel.Type.DYN),
        "events": cel.Type.List(cel.Type.Map(cel.Type.STRING, cel.Type.DYN)),
        "now": cel.Type.TIMESTAMP,
    }
)


class ConditionError(Exception):
    """A condition that does not compile, is too large, or failed to evaluate; the message says why."""


@dataclass(frozen=True)
class CompiledCondition:
    """A checked expression, ready to evaluate any number of times, and what it reads (from its
    checked AST, :mod:`services.common.condition_reads`)."""

    source: str
    # cel_expr_python's Expression: typed in its stubs, but the class is not exported by name.
    program: Any = field(repr=False, compare=False)
    # The event types its value can depend on (None: any event; empty: none).
    reads_events: frozenset[str] | None = None
    reads_lead: bool = True
    reads_now: bool = True
    # Its value over no events (None until first needed): (the bool, or the error's message).
    _without_events: tuple[bool | None, str] | None = field(default=None, init=False, repr=False, compare=False)

    def reads_any(self, events: Sequence[EventFact]) -> bool:
        """Whether ``events`` holds an event this condition can read."""
        if not events:
            return False
        kinds = self.reads_events
        return kinds is None or any(event.type in kinds for event in events)

    def value_without_events(self) -> bool:
        """The value over no events, for a condition that reads neither ``lead`` nor ``now``: the
        same for every lead with none of the events it reads, so evaluated once (raises
        :class:`ConditionError` as :func:`evaluate` would)."""
        if self._without_events is None:
            outcome: tuple[bool | None, str]
            try:
                outcome = (_value(self, _ENVIRONMENT.Activation({"events": []})), "")
            except ConditionError as failure:
                outcome = (None, str(failure))
            object.__setattr__(self, "_without_events", outcome)
        assert self._without_events is not None
        value, error = self._without_events
        if value is None:
            raise ConditionError(error)
        return value


@dataclass(frozen=True)
class EventFact:
    """One event as a condition sees it."""

    type: str
    at: datetime
    step: str = ""
    sequence: str = ""
    variant: str = ""
    automated: bool = False
    properties: Mapping[str, object] = field(default_factory=dict)

    def as_cel(self) -> dict[str, object]:
        return {
            "type": self.type,
            "step": self.step,
            "sequence": self.sequence,
            "variant": self.variant,
            "automated": self.automated,
            "at": self.at.isoformat(),
            "properties": _plain_dict(self.properties),
        }


@dataclass(frozen=True)
class LeadFact:
    """The part of a lead a condition may see: the address's domain, never the address."""

    domain: str
    source: str
    accepted_at: datetime
    first_name: str | None = None
    last_name: str | None = None
    tags: Sequence[str] = ()
    utm: Mapping[str, object] = field(default_factory=dict)
    locale: str | None = None
    timezone: str | None = None
    metadata: Mapping[str, object] = field(default_factory=dict)

    def as_cel(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "first_name": self.first_name or "",
            "last_name": self.last_name or "",
            "source": self.source,
            "tags": self.tags if isinstance(self.tags, list) else list(self.tags),
            "utm": _plain_dict(self.utm),
            "locale": self.locale or "",
            "timezone": self.timezone or "",
            "metadata": _plain_dict(self.metadata),
            "accepted_at": self.accepted_at.isoformat(),
        }


def email_domain(email: str) -> str:
    """The domain part of an address, lower-cased (all a condition learns of the address)."""
    return email.rpartition("@")[2].lower()


@dataclass(frozen=True)
class ConditionFacts:
    """Everything one evaluation sees: one lead and that lead's events (newest first)."""

    # None when no condition to evaluate names ``lead`` (its conversion is skipped).
    lead: LeadFact | None
    events: Sequence[EventFact]
    now: datetime
    # cel_expr_python's Activation (not exported by name): the converted variables.
    _activation: Any = field(default=None, init=False, repr=False, compare=False)

    def activation(self) -> Any:
        """The variables converted into CEL values once, however many conditions are evaluated over
        them (the conversion costs several times one evaluation)."""
        if self._activation is None:
            variables: dict[str, object] = {
                "events": [event.as_cel() for event in self.events[:MAX_EVENTS]],
                "now": self.now,
            }
            if self.lead is not None:
                variables["lead"] = self.lead.as_cel()
            built = _ENVIRONMENT.Activation(variables)
            object.__setattr__(self, "_activation", built)
        return self._activation


_STEP_NAMED = re.compile(
    r"\.step\s*==\s*(?:'([^'\\]*)'|\"([^\"\\]*)\")|(?:'([^'\\]*)'|\"([^\"\\]*)\")\s*==\s*[A-Za-z_][A-Za-z0-9_]*\.step\b"
)


def named_steps(source: str) -> set[str]:
    """The step names ``source`` compares an event's ``step`` with (``e.step == 'hello'``), so that
    applying a Sequence can refuse a name it does not have. An expression that also compares an
    event's ``sequence`` may name another Sequence's steps: none are returned for it."""
    if re.search(r"\.sequence\b", source):
        return set()
    return {next(group for group in match.groups() if group is not None) for match in _STEP_NAMED.finditer(source)}


def condition_problem(source: str) -> str | None:
    """Why ``source`` cannot be a condition (too large, does not compile, not a boolean, a ``lead``
    field that does not exist), or None when it can."""
    try:
        compile_condition(source)
    except ConditionError as error:
        return str(error)
    return None


@lru_cache(maxsize=4096)
def compile_condition(source: str) -> CompiledCondition:
    """Compile and type-check ``source`` (cached: revisions are immutable, so the same few sources
    are evaluated again and again); raises :class:`ConditionError`."""
    if not source.strip():
        raise ConditionError("an empty expression")
    if len(source) > MAX_SOURCE_CHARS:
        raise ConditionError(f"the expression is {len(source)} characters long, at most {MAX_SOURCE_CHARS} allowed")
    code = _STRING_LITERAL.sub("''", source)
    comprehensions = len(_COMPREHENSION.findall(code))
    if comprehensions > MAX_COMPREHENSIONS:
        raise ConditionError(
            f"the expression has {comprehensions} comprehensions (exists, all, map, filter), "
            f"at most {MAX_COMPREHENSIONS} allowed"
        )
    unknown = sorted({name for name in _LEAD_FIELD.findall(code) if name not in LEAD_FIELDS})
    if unknown:
        raise ConditionError(f"lead has no field {', '.join(unknown)} (it has {', '.join(sorted(LEAD_FIELDS))})")
    try:
        program = _ENVIRONMENT.compile(source)
    except RuntimeError as error:
        raise ConditionError(_compile_message(str(error))) from None
    result = program.return_type().name().lower()
    if result not in ("bool", "dyn"):
        raise ConditionError(f"the expression gives {result}, not bool")
    checked = program.serialize()
    return CompiledCondition(
        source,
        program,
        reads_events=event_types_read(checked, "events"),
        reads_lead=names_variable(checked, "lead"),
        reads_now=names_variable(checked, "now"),
    )


def evaluate(condition: CompiledCondition, facts: ConditionFacts) -> bool:
    """The value of ``condition`` over ``facts``; raises :class:`ConditionError` when the evaluation
    fails (a missing map key, a type mismatch) or does not give a bool.

    A condition that reads neither ``lead`` nor ``now``, over facts with none of the events it reads,
    has the value it has over no events at all: computed once, not per lead (most leads of a
    ``exitWhen: events.exists(e, e.type == 'purchased')`` have not purchased)."""
    if not (condition.reads_lead or condition.reads_now or condition.reads_any(facts.events)):
        return condition.value_without_events()
    return _value(condition, facts.activation())


def _value(condition: CompiledCondition, activation: Any) -> bool:
    try:
        value = condition.program.eval(activation)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ConditionError(f"{condition.source!r} failed: {error}") from None
    # A bool value's Python value is a bool (an error's is its message): one call on the hot path
    # instead of naming the value's type first.
    try:
        result = value.value()
    except (RuntimeError, TypeError, ValueError):
        result = None
    if isinstance(result, bool):
        return result
    kind = value.type().name().lower()
    if kind == "error":
        raise ConditionError(f"{condition.source!r} failed: {value.value()}")
    raise ConditionError(f"{condition.source!r} gave {kind}, not bool")


def _compile_message(message: str) -> str:
    # cel-cpp's message: "INVALID_ARGUMENT: ERROR: <input>:1:34: undeclared reference ... [INVALID_ARGUMENT]"
    message = message.removeprefix("INVALID_ARGUMENT: ").replace(" [INVALID_ARGUMENT]", "")
    return " ".join(line.strip() for line in message.splitlines() if line.strip() and not line.strip().startswith("|"))


def _plain_dict(mapping: Mapping[str, object]) -> dict[str, object]:
    # The CEL runtime converts dicts and lists only; copy anything else (a frozen mapping).
    return mapping if isinstance(mapping, dict) else dict(mapping)
