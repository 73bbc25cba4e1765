"""Reconciling one Sequence resource: plain functions over a connection, no kopf.

``reconcile_sequence`` is the one idempotent function every handler calls (create, update, resume and
the refresh timer): it validates what the schema cannot, stores the spec as a revision when it changed,
and returns the status to write. Running it twice, or after an operator restart, changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from proto.sequence import Condition, SequenceResource, SequenceStatus
from services.common.clock import utcnow
from services.common.db import Connection
from services.common.sequence_templates import ConfigMapLookup
from services.common.sequences import (
    DeletedSequence,
    InvalidSequence,
    apply_sequence,
    count_enrollments,
    delete_sequence,
    sequence_id,
)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the resource."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Reconciled:
    """The status to write and, when something happened worth telling, an Event."""

    status: dict[str, Any]
    event: Event | None


def _condition(
    previous: Mapping[str, Any], kind: str, status: Literal["True", "False"], reason: str, message: str, generation: int
) -> Condition:
    """A condition whose lastTransitionTime moves only when its status changes."""
    before = {c.get("type"): c for c in previous.get("conditions") or [] if isinstance(c, Mapping)}.get(kind, {})
    changed = before.get("status") != status
    when = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ") if changed else str(before.get("lastTransitionTime"))
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=when,
        observed_generation=generation,
    )


def _status_dict(status: SequenceStatus) -> dict[str, Any]:
    built: dict[str, Any] = msgspec.to_builtins(status)
    return {key: value for key, value in built.items() if value is not None}


async def _current_revision(conn: Connection, namespace: str, name: str) -> tuple[int | None, int | None]:
    cursor = await conn.execute(
        """SELECT s.current_revision AS revision,
                  (SELECT count(*) FROM sequence_steps st
                   WHERE st.sequence_id = s.id AND st.revision = s.current_revision) AS steps
           FROM sequences s WHERE s.id = %s AND s.deleted_at IS NULL""",
        (sequence_id(namespace, name),),
    )
    row = await cursor.fetchone()
    if row is None:
        return None, None
    return int(row["revision"]), int(row["steps"])  # type: ignore[call-overload]


async def reconcile_sequence(conn: Connection, body: Mapping[str, Any], config_maps: ConfigMapLookup) -> Reconciled:
    """Bring PostgreSQL in line with one Sequence object (as the API returns it) and compute its status.

    A spec that cannot be applied (a template that does not render, a missing ConfigMap or key, an
    unknown time zone, a rule of the CRD broken) changes nothing in the database: the status says
    Valid=False and Ready=False naming the field, the last valid revision keeps running, and the
    caller posts a Warning Event. Runs inside the caller's transaction.
    """
    metadata = body.get("metadata") or {}
    namespace, name = str(metadata.get("namespace") or "default"), str(metadata.get("name"))
    generation = int(metadata.get("generation") or 1)
    previous = body.get("status") or {}
    document = {key: body.get(key) for key in ("apiVersion", "kind", "metadata", "spec")}
    try:
        resource = msgspec.convert(document, SequenceResource)
        applied = await apply_sequence(conn, resource, config_maps)
    except (msgspec.ValidationError, InvalidSequence) as error:
        message = str(error).removeprefix(f"Sequence {namespace}/{name}: ")
        revision, steps = await _current_revision(conn, namespace, name)
        counts = await count_enrollments(conn, namespace, name)
        running = f"; revision {revision} keeps running" if revision else ""
        status = SequenceStatus(
            observed_generation=generation,
            revision=revision,
            steps=steps,
            conditions=[
                _condition(previous, "Valid", "False", "InvalidSpec", message, generation),
                _condition(previous, "Ready", "False", "InvalidSpec", f"the spec is invalid{running}", generation),
            ],
            active_enrollments=counts.active,
            completed_enrollments=counts.completed,
            cancelled_enrollments=counts.cancelled,
        )
        return Reconciled(_status_dict(status), Event("Warning", "InvalidSpec", message))
    counts = await count_enrollments(conn, namespace, name)
    if resource.spec.paused:
        ready_reason, ready_message = "Paused", f"revision {applied.revision} is paused: due steps are held"
    else:
        ready_reason, ready_message = "Synced", f"revision {applied.revision} is live"
    status = SequenceStatus(
        observed_generation=generation,
        revision=applied.revision,
        steps=len(resource.spec.steps),
        conditions=[
            _condition(previous, "Valid", "True", "Valid", "the spec is valid", generation),
            _condition(previous, "Ready", "True", ready_reason, ready_message, generation),
        ],
        active_enrollments=counts.active,
        completed_enrollments=counts.completed,
        cancelled_enrollments=counts.cancelled,
    )
    event = None
    if applied.changed:
        moved = f"; {applied.moved} in-flight enrollments moved to it" if applied.moved else ""
        done = f", {applied.completed} completed (their remaining steps were removed)" if applied.completed else ""
        event = Event("Normal", "RevisionStored", f"revision {applied.revision} stored{moved}{done}")
    return Reconciled(_status_dict(status), event)


async def finalize_sequence(conn: Connection, body: Mapping[str, Any]) -> DeletedSequence:
    """The Sequence is being deleted: stop new enrollments and cancel pending steps (idempotent)."""
    metadata = body.get("metadata") or {}
    return await delete_sequence(conn, str(metadata.get("namespace") or "default"), str(metadata.get("name")))
