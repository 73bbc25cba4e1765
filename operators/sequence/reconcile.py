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
    previous: Mapping[str, Any],
    kind: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    generation: int,
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
        if applied.stale:
            # A handler behind a newer one: the newer generation's status stands; write nothing.
            return Reconciled({}, None)
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
    namespace, name = str(metadata.get("namespace") or "default"), str(metadata.get("name"))
    return await delete_sequence(conn, namespace, name, uid=metadata.get("uid"))


def _with_conditions(previous: Mapping[str, Any], replaced: list[Condition]) -> dict[str, Any]:
    """The previous conditions with ``replaced`` put in place of those of the same type."""
    kinds = {c.type for c in replaced}
    kept = [c for c in previous.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") not in kinds]
    return {"conditions": [*kept, *(msgspec.to_builtins(c) for c in replaced)]}


def database_unavailable(body: Mapping[str, Any], error: BaseException, *, deleting: bool = False) -> Reconciled:
    """The status while PostgreSQL cannot be reached: Ready=False, reason DatabaseUnavailable, for the
    generation that is waiting; observedGeneration stays at the last one applied (nothing was), so
    ``kubectl wait --for=condition=Ready`` does not pass on a change that is not live. No Event: the
    operator retries with backoff and a Warning on every retry would flood the namespace."""
    generation = int((body.get("metadata") or {}).get("generation") or 1)
    previous = body.get("status") or {}
    waiting = "the deletion waits" if deleting else f"generation {generation} is not applied yet"
    message = f"the database is unreachable; {waiting}, retrying: {_one_line(error)}"
    ready = _condition(previous, "Ready", "False", "DatabaseUnavailable", message, generation)
    return Reconciled(_with_conditions(previous, [ready]), None)


def reconcile_failed(body: Mapping[str, Any], error: BaseException) -> Reconciled:
    """The status after an error nobody foresaw (a bug, a row the code cannot read): Valid=False and
    Ready=False with reason ReconcileError and the error in one line (no traceback: that goes to the
    log), and a Warning Event. The last revision stored keeps running; the refresh timer tries again."""
    generation = int((body.get("metadata") or {}).get("generation") or 1)
    previous = body.get("status") or {}
    message = f"reconciling failed: {_one_line(error)}"
    status = _with_conditions(
        previous,
        [
            _condition(previous, "Valid", "False", "ReconcileError", message, generation),
            _condition(previous, "Ready", "False", "ReconcileError", message, generation),
        ],
    )
    status["observedGeneration"] = generation
    return Reconciled(status, Event("Warning", "ReconcileError", message))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {text}"[:500]
