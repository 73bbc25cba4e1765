"""Announcing enrollments that start and end: ``enrollment.started`` and ``enrollment.ended`` messages
queued in the outbox, in the caller's transaction, by whoever changes an enrollment's status.

Every writer that moves an enrollment in or out of ``active`` returns the rows it changed
(``RETURNING`` :data:`ENROLLMENT_COLUMNS`) and passes them here, so an announcement is published only
if the change commits. The messages carry ids and facts only (never the lead's address): the webhooks
service maps them to ``enrollment.started``, ``enrollment.completed`` and ``enrollment.exited``.

Their ids derive from the enrollment (it starts once and ends once), so a consumer that sees one
twice can tell.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from proto.messages import EnrollmentEnded, EnrollmentStarted
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.outbox import enqueue_messages

ANNOUNCEMENT_NAMESPACE = uuid.UUID("3e9d7a51-6c0b-4f28-a1d4-8b2e5f7c9a06")

# What a RETURNING clause gives back for :meth:`EnrollmentRef.of` (qualify with the table's alias).
ENROLLMENT_COLUMNS = "e.id AS enrollment_id, e.lead_id, e.sequence_id, e.revision"

Outcome = Literal["completed", "exited"]


@dataclass(frozen=True)
class EnrollmentRef:
    """What an announcement names about an enrollment."""

    enrollment_id: uuid.UUID
    lead_id: uuid.UUID
    sequence_id: uuid.UUID
    revision: int

    @classmethod
    def of(cls, row: Mapping[str, object]) -> EnrollmentRef:
        """From a row with the columns of :data:`ENROLLMENT_COLUMNS`."""
        return cls(
            enrollment_id=row["enrollment_id"],  # type: ignore[arg-type]
            lead_id=row["lead_id"],  # type: ignore[arg-type]
            sequence_id=row["sequence_id"],  # type: ignore[arg-type]
            revision=int(row["revision"]),  # type: ignore[call-overload]
        )


async def announce_started(conn: Connection, topic: str, enrollments: Iterable[EnrollmentRef]) -> None:
    """Queue an ``enrollment.started`` on ``topic`` (key: lead id) for each new enrollment."""
    now = utcnow()
    await enqueue_messages(
        conn,
        [
            (
                topic,
                str(e.lead_id),
                EnrollmentStarted(
                    id=uuid.uuid5(ANNOUNCEMENT_NAMESPACE, f"started/{e.enrollment_id}"),
                    occurred_at=now,
                    enrollment_id=e.enrollment_id,
                    lead_id=e.lead_id,
                    sequence_id=e.sequence_id,
                    revision=e.revision,
                ),
            )
            for e in enrollments
        ],
    )


async def announce_ended(
    conn: Connection, topic: str, enrollments: Iterable[EnrollmentRef], *, outcome: Outcome, reason: str | None = None
) -> None:
    """Queue an ``enrollment.ended`` on ``topic`` (key: lead id) for each enrollment that ended:
    ``completed`` after its last step, or ``exited`` early for ``reason`` (``goal``, ``unsubscribed``,
    a suppression's reason)."""
    now = utcnow()
    await enqueue_messages(
        conn,
        [
            (
                topic,
                str(e.lead_id),
                EnrollmentEnded(
                    id=uuid.uuid5(ANNOUNCEMENT_NAMESPACE, f"ended/{e.enrollment_id}"),
                    occurred_at=now,
                    enrollment_id=e.enrollment_id,
                    lead_id=e.lead_id,
                    sequence_id=e.sequence_id,
                    revision=e.revision,
                    outcome=outcome,
                    reason=reason if outcome == "exited" else None,
                ),
            )
            for e in enrollments
        ],
    )
