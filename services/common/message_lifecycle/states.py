"""The statuses of a message and the transitions allowed between them, as data; the retry decision.

``TRANSITIONS`` is the whole machine (name, sources, target, who performs it):
``create`` → queued (scheduler); ``claim`` queued|retrying → sending (dispatcher, counts the attempt);
``record_sent|failed|dead|skipped`` sending → sent|retrying|dead|skipped (dispatcher);
``requeue_retry`` retrying → queued, ``give_up`` retrying → dead (the attempt cap), ``republish``
queued → queued (the command again), ``requeue_stuck`` sending → queued (retry-failed);
``replay`` dead → queued (``healingwork dlq replay``); ``cancel`` queued|retrying → skipped (a deleted
Sequence).

``sent`` and ``skipped`` are final; ``dead`` leaves only by ``replay`` (a person decides); ``sending``
is entered only by ``claim``, which counts the attempt, so a redelivered command sends nothing.
Pure: no I/O, so a test can walk the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from services.common.retry import backoff_delay


class Status(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    RETRYING = "retrying"
    DEAD = "dead"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Transition:
    """A move from any of ``sources`` to ``target``, performed by ``by``."""

    name: str
    sources: frozenset[Status]
    target: Status
    by: str

    @property
    def source_names(self) -> list[str]:
        """The sources as the ``text[]`` parameter of ``WHERE status = ANY(%s)``."""
        return sorted(self.sources)


def _transition(name: str, sources: set[Status], target: Status, by: str) -> Transition:
    return Transition(name, frozenset(sources), target, by)


S = Status
CREATE = _transition("create", set(), S.QUEUED, "scheduler")
CLAIM = _transition("claim", {S.QUEUED, S.RETRYING}, S.SENDING, "dispatcher")
RECORD_SENT = _transition("record_sent", {S.SENDING}, S.SENT, "dispatcher")
RECORD_FAILED = _transition("record_failed", {S.SENDING}, S.RETRYING, "dispatcher")
RECORD_DEAD = _transition("record_dead", {S.SENDING}, S.DEAD, "dispatcher")
RECORD_SKIPPED = _transition("record_skipped", {S.SENDING}, S.SKIPPED, "dispatcher")
REQUEUE_RETRY = _transition("requeue_retry", {S.RETRYING}, S.QUEUED, "retry-failed")
GIVE_UP = _transition("give_up", {S.RETRYING}, S.DEAD, "retry-failed")
REPUBLISH = _transition("republish", {S.QUEUED}, S.QUEUED, "retry-failed")
REQUEUE_STUCK = _transition("requeue_stuck", {S.SENDING}, S.QUEUED, "retry-failed (RESEND_STUCK_SENDING)")
REPLAY = _transition("replay", {S.DEAD}, S.QUEUED, "dlq replay")
CANCEL = _transition("cancel", {S.QUEUED, S.RETRYING}, S.SKIPPED, "sequence deleted")

TRANSITIONS: tuple[Transition, ...] = (
    CREATE,
    CLAIM,
    RECORD_SENT,
    RECORD_FAILED,
    RECORD_DEAD,
    RECORD_SKIPPED,
    REQUEUE_RETRY,
    GIVE_UP,
    REPUBLISH,
    REQUEUE_STUCK,
    REPLAY,
    CANCEL,
)

# The outcome of an attempt (a claimed message) by the status it ends in.
OUTCOMES: dict[Status, Transition] = {t.target: t for t in (RECORD_SENT, RECORD_FAILED, RECORD_DEAD, RECORD_SKIPPED)}
# The event each outcome announces on ``email.events`` (a transient failure is the event ``failed``).
EVENT_OF_OUTCOME: dict[Status, str] = {S.SENT: "sent", S.RETRYING: "failed", S.DEAD: "dead", S.SKIPPED: "skipped"}


class RefusedTransition(ValueError):
    """A transition the state machine does not allow (a programming error, never a user's)."""


def allowed(source: Status, target: Status) -> list[Transition]:
    """The transitions that move a message from ``source`` to ``target`` (empty: refused)."""
    return [t for t in TRANSITIONS if source in t.sources and t.target == target]


def outcome_transition(status: Status | str) -> Transition:
    """The transition that records an attempt ending in ``status``; RefusedTransition for any other status."""
    try:
        return OUTCOMES[Status(status)]
    except (KeyError, ValueError):
        raise RefusedTransition(f"an attempt cannot end in {status!r}") from None


@dataclass(frozen=True)
class FailureDecision:
    """What a failed attempt becomes: ``dead`` (with why) or ``retrying`` after ``retry_in``."""

    status: Status
    reason: str
    retry_in: timedelta | None = None


def has_attempts_left(attempts: int, max_attempts: int) -> bool:
    """Whether a message that has used ``attempts`` may be tried again (the attempt cap)."""
    return attempts < max_attempts


def decide_after_failure(
    reason: str, *, permanent: bool, attempts: int, max_attempts: int, base_delay_s: float, max_delay_s: float
) -> FailureDecision:
    """The one retry decision: a permanent failure or a spent attempt cap is ``dead``; anything else is
    retried after a backoff with full jitter (at least a second)."""
    if permanent or not has_attempts_left(attempts, max_attempts):
        return FailureDecision(Status.DEAD, reason if permanent else f"{reason} (after {attempts} attempts)")
    delay = backoff_delay(attempts, base_delay_s, max_delay_s)
    return FailureDecision(Status.RETRYING, reason, timedelta(seconds=max(delay, 1.0)))
