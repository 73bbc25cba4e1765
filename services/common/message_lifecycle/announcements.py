"""The one id scheme for what a message's transitions announce, and the builders of those messages.

Everything is keyed by the message id, its *life* (``messages.replays``: how many times a person
replayed it from the dead letters) and the attempt (``messages.attempts``, reset by a replay):
``<message id>/<life>.<attempt>/<what>``. The same transition of the same attempt always yields the
same key, so a repeat is recognisable (``events.dedupe_key`` is unique; ``email.event`` and
``email.dead_lettered`` ids are ``uuid5(message id, key)``), and two attempts never share one.

Consumers never depended on these ids for idempotency: the dispatcher claims by status
(``sending`` only from ``queued`` or a due ``retrying``), and every event is written in the statement
that makes its transition, so commands and events in the scheme used before (the message id itself,
``replay/<time>``, ``resend/<n>``, claim timestamps) cannot make anything happen twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from proto.messages import EmailDeadLettered, EmailDispatch
from services.common.clock import utcnow
from services.common.events import MessageRef, NewEvent
from services.common.ids import name_uuid


@dataclass(frozen=True)
class Attempt:
    """One attempt of one life of a message, and what its announcements name."""

    ref: MessageRef
    enrollment_id: uuid.UUID
    life: int
    attempt: int

    @property
    def message_id(self) -> uuid.UUID:
        return self.ref.message_id

    def key(self, what: str) -> str:
        """``<message id>/<life>.<attempt>/<what>``: the dedupe key of an event, the seed of an id."""
        return f"{self.ref.message_id}/{self.life}.{self.attempt}/{what}"

    def id_of(self, what: str) -> uuid.UUID:
        return name_uuid(self.ref.message_id, self.key(what))

    def next(self) -> Attempt:
        """The attempt a new ``email.dispatch`` command asks for."""
        return Attempt(self.ref, self.enrollment_id, self.life, self.attempt + 1)


def dispatch_command(attempt: Attempt, occurred_at: datetime | None = None) -> EmailDispatch:
    """The ``email.dispatch`` command for ``attempt`` (the attempt to be made, 1-based)."""
    return EmailDispatch(
        id=attempt.id_of("dispatch"),
        occurred_at=occurred_at or utcnow(),
        message_id=attempt.message_id,
        enrollment_id=attempt.enrollment_id,
        lead_id=attempt.ref.lead_id,
        attempt=attempt.attempt,
    )


def dispatch_outbox_row(
    topic: str, attempt: Attempt, occurred_at: datetime | None = None
) -> tuple[str, str, EmailDispatch]:
    """The outbox row of :func:`dispatch_command`, keyed by enrollment (ordering per enrollment)."""
    return topic, str(attempt.enrollment_id), dispatch_command(attempt, occurred_at)


def dead_letter(attempt: Attempt, reason: str) -> EmailDeadLettered:
    """The dead letter announcing on the dead-letter topic that the message will not be delivered."""
    return EmailDeadLettered(
        id=attempt.id_of("dead_lettered"),
        occurred_at=utcnow(),
        message_id=attempt.message_id,
        enrollment_id=attempt.enrollment_id,
        attempts=attempt.attempt,
        reason=reason[:2000],
    )


def event(attempt: Attempt, what: str, detail: str = "") -> NewEvent:
    """The event ``what`` of ``attempt``, keyed so that recording it twice records it once."""
    return NewEvent(attempt.ref, what, detail, dedupe_key=attempt.key(what))
