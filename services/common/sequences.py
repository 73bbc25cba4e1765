"""Sequences in PostgreSQL: validating a Sequence resource, storing it as an immutable revision, and
deleting it; reading Sequences (and the ConfigMaps they reference) from YAML files.

``apply_sequence`` is the single writer of the sequence tables: ``healingwork sequences apply``,
``healingwork dev`` and the operator (``operators.sequence.reconcile``) all call it.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import msgspec
import yaml

from proto.sequence import KIND, MAX_INLINE_CHARACTERS, SequenceResource
from services.common.conditions import condition_problem, named_steps
from services.common.config import DatabaseSettings, check_email
from services.common.db import Connection, command_transaction
from services.common.durations import parse_duration
from services.common.message_lifecycle.transitions import cancel_sequence_messages
from services.common.send_window import LEAD, zone
from services.common.sequence_templates import (
    ConfigMapLookup,
    InvalidTemplate,
    StepBody,
    check_step_bodies,
    no_config_maps,
    resolve_step_bodies,
)
from services.common.step_rules import rules_of_spec

SEQUENCE_NAMESPACE_UUID = uuid.UUID("5b0f9c52-3f3c-4a51-9a36-0f3e3c1c7a11")


class InvalidSequence(Exception):
    """A Sequence document that cannot be applied; the message names the file and the field."""


@dataclass(frozen=True)
class AppliedSequence:
    namespace: str
    name: str
    revision: int
    changed: bool
    # Enrollments moved to the new revision (revisionPolicy Latest) and those completed because every
    # step they had left was removed.
    moved: int = 0
    completed: int = 0
    # The resource's generation is older than the stored one: nothing was written.
    stale: bool = False


@dataclass(frozen=True)
class StoredGeneration:
    """The generation behind a Sequence's current revision, and that revision."""

    number: int
    revision: int


async def _stored_generation(conn: Connection, seq_id: uuid.UUID, uid: str | None) -> StoredGeneration | None:
    """The generation of the live Sequence's current revision when it came from the same object
    (``uid``); None when there is none to compare with: no revision, a deleted Sequence, a revision from
    a file, or another object of the same name (deleted and created again, its generation restarting)."""
    cursor = await conn.execute(
        """SELECT r.generation, r.revision FROM sequences s
           JOIN sequence_revisions r ON r.sequence_id = s.id AND r.revision = s.current_revision
           WHERE s.id = %s AND s.deleted_at IS NULL AND r.generation IS NOT NULL
             AND (r.resource_uid IS NULL OR %s::text IS NULL OR r.resource_uid = %s::text)""",
        (seq_id, uid, uid),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    return StoredGeneration(int(row["generation"]), int(row["revision"]))  # type: ignore[call-overload]


def sequence_id(namespace: str, name: str) -> uuid.UUID:
    """The stable id of a Sequence, derived from its namespace and name."""
    return uuid.uuid5(SEQUENCE_NAMESPACE_UUID, f"{namespace}/{name}")


def spec_problems(resource: SequenceResource) -> list[str]:
    """The cross-field rules of the CRD's CEL validations, plus what a schema cannot check (time zones
    known to tzdata); each problem names its field. The API server enforces the CEL rules for
    ``kubectl apply``; this enforces them for files and for a CRD installed without them."""
    spec = resource.spec
    problems = []
    trigger = spec.trigger
    if not (trigger.all or trigger.sources or trigger.tags):
        problems.append("a trigger needs sources, tags, or all: true - at `$.spec.trigger`")
    if trigger.all and (trigger.sources or trigger.tags):
        problems.append("all: true matches every lead; leave sources and tags out - at `$.spec.trigger.all`")
    seen: set[str] = set()
    for index, step in enumerate(spec.steps):
        # The CRD's steps are a list-map keyed by name: the API server refuses a repeat the same way.
        if step.name in seen:
            problems.append(
                f"Duplicate value: step name {step.name!r} (step names must be unique) - at `$.spec.steps[{index}]`"
            )
        seen.add(step.name)
    inline = sum(
        len(part or "")
        for step in spec.steps
        for part in (
            step.subject,
            step.html,
            step.text,
            *(p for v in step.variants for p in (v.subject, v.html, v.text)),
        )
    )
    if inline > MAX_INLINE_CHARACTERS:
        problems.append(
            f"the inline subjects and bodies of all steps exceed {MAX_INLINE_CHARACTERS} characters in total"
            f" ({inline}); keep large bodies in ConfigMaps (templateRef) - at `$.spec.steps`"
        )
    for index, step in enumerate(spec.steps):
        where = f"`$.spec.steps[{index}]`"
        try:
            parse_duration(step.delay)
        except ValueError as error:
            problems.append(f"{error} - at `$.spec.steps[{index}].delay`")
        ref = step.template_ref
        if step.html is None and step.text is None and ref is None:
            problems.append(f"a step needs html, text or templateRef - at {where}")
        if ref is not None:
            if ref.html_key is None and ref.text_key is None:
                problems.append(f"a templateRef needs htmlKey or textKey - at `$.spec.steps[{index}].templateRef`")
            if ref.html_key is not None and step.html is not None:
                problems.append(
                    f"give the HTML body inline or as templateRef.htmlKey, not both - at {where[:-1]}.html`"
                )
            if ref.text_key is not None and step.text is not None:
                problems.append(
                    f"give the text body inline or as templateRef.textKey, not both - at {where[:-1]}.text`"
                )
    problems.extend(condition_problems(resource))
    if spec.from_ is not None and (problem := check_email(spec.from_.email)):
        problems.append(f"{spec.from_.email!r} {problem} - at `$.spec.from.email`")
    window = spec.send_window
    if window is not None:
        if not window.start < window.end:
            problems.append(
                f"the window's start ({window.start}) must be before its end ({window.end});"
                " windows across midnight are not supported - at `$.spec.sendWindow.end`"
            )
        if window.fallback_timezone == LEAD:
            problems.append(
                "fallbackTimezone must be an IANA time zone, not lead - at `$.spec.sendWindow.fallbackTimezone`"
            )
        for name, value in (("timezone", window.timezone), ("fallbackTimezone", window.fallback_timezone)):
            if value != LEAD and zone(value) is None:
                problems.append(f"unknown time zone {value!r} - at `$.spec.sendWindow.{name}`")
    return problems


def condition_problems(resource: SequenceResource) -> list[str]:
    """Each CEL expression of the Sequence that does not compile against the condition environment,
    or that names a step (``e.step == 'name'``) the Sequence does not have; each names its field."""
    spec = resource.spec
    expressions: list[tuple[str, str]] = []
    if spec.trigger.when is not None:
        expressions.append(("$.spec.trigger.when", spec.trigger.when))
    if spec.exit_when is not None:
        expressions.append(("$.spec.exitWhen", spec.exit_when))
    for index, step in enumerate(spec.steps):
        if step.when is not None:
            expressions.append((f"$.spec.steps[{index}].when", step.when))
        if step.wait_for is not None:
            expressions.append((f"$.spec.steps[{index}].waitFor.condition", step.wait_for.condition))
    steps = {step.name for step in spec.steps}
    problems = []
    for index, step in enumerate(spec.steps):
        if step.wait_for is not None:
            try:
                parse_duration(step.wait_for.timeout)
            except ValueError as error:
                problems.append(f"{error} - at `$.spec.steps[{index}].waitFor.timeout`")
    for where, source in expressions:
        if problem := condition_problem(source):
            problems.append(f"{problem} - at `{where}`")
            continue
        unknown = sorted(named_steps(source) - steps)
        if unknown:
            problems.append(f"no step named {', '.join(map(repr, unknown))} in this Sequence - at `{where}`")
    for index, step in enumerate(spec.steps):
        if step.subject is None and not (step.variants and all(v.subject for v in step.variants)):
            problems.append(
                f"a step needs a subject, or a subject in each of its variants - at `$.spec.steps[{index}]`"
            )
        names = [variant.name for variant in step.variants]
        if len(set(names)) != len(names):
            problems.append(f"variant names must be unique - at `$.spec.steps[{index}].variants`")
        for number, variant in enumerate(step.variants):
            ref = variant.template_ref
            where = f"`$.spec.steps[{index}].variants[{number}]`"
            if ref is not None and ref.html_key is None and ref.text_key is None:
                problems.append(f"a templateRef needs htmlKey or textKey - at {where}")
            if ref is not None and ref.html_key is not None and variant.html is not None:
                problems.append(f"give the HTML body inline or as templateRef.htmlKey, not both - at {where}")
            if ref is not None and ref.text_key is not None and variant.text is not None:
                problems.append(f"give the text body inline or as templateRef.textKey, not both - at {where}")
    return problems


def parse_sequence_document(document: object, origin: str) -> SequenceResource:
    """Validate one decoded YAML document as a Sequence; raises InvalidSequence naming the field."""
    try:
        resource = msgspec.convert(document, SequenceResource)
    except msgspec.ValidationError as error:
        raise InvalidSequence(f"{origin}: {error}") from error
    problems = spec_problems(resource)
    if problems:
        raise InvalidSequence(f"{origin}: {'; '.join(problems)}")
    return resource


@dataclass
class Manifests:
    """The Sequences of a set of files, and the ConfigMaps found next to them (by namespace, name)."""

    sequences: list[SequenceResource] = field(default_factory=list)
    config_maps: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        return self.config_maps.get((namespace, name))


def load_manifests(paths: list[Path]) -> Manifests:
    """Read every Sequence and ConfigMap document from the given files and directories
    (``*.yaml``/``*.yml``); ``-`` reads standard input. Documents of other kinds are ignored, so a
    folder of mixed manifests can be pointed at."""
    files: list[Path] = []
    for path in paths:
        if str(path) == "-":
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        elif path.exists():
            files.append(path)
        else:
            raise InvalidSequence(f"{path}: no such file or directory")
    manifests = Manifests()
    for file in files:
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text()
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError as error:
            raise InvalidSequence(f"{file}: not valid YAML ({error})") from error
        for index, document in enumerate(documents):
            if not isinstance(document, dict):
                continue
            if document.get("kind") == KIND:
                manifests.sequences.append(parse_sequence_document(document, f"{file} (document {index + 1})"))
            elif document.get("kind") == "ConfigMap" and document.get("apiVersion") == "v1":
                metadata = document.get("metadata") or {}
                key = (str(metadata.get("namespace") or "default"), str(metadata.get("name")))
                manifests.config_maps[key] = {str(k): str(v) for k, v in (document.get("data") or {}).items()}
    return manifests


def load_sequence_files(paths: list[Path]) -> list[SequenceResource]:
    """Every Sequence document of the given files and directories (see :func:`load_manifests`)."""
    return load_manifests(paths).sequences


def _revision_number(current: int | None, generation: int | None) -> int:
    """A new revision's number: the resource's generation when the API server gave one and it moves
    forward, else the next number (a Sequence from a file, or one deleted and created again, whose
    generation restarts at 1 while its old revisions are still referenced)."""
    following = 1 if current is None else current + 1
    return generation if generation is not None and generation >= following else following


async def apply_sequence(
    conn: Connection, resource: SequenceResource, config_maps: ConfigMapLookup = no_config_maps
) -> AppliedSequence:
    """Store ``resource`` as the Sequence's current revision, inside the caller's transaction.

    Its templates are resolved (ConfigMap references) and rendered against sample leads first; a failure
    raises InvalidSequence naming the field and stores nothing. An unchanged spec (bodies included)
    keeps the current revision, so applying is idempotent; a changed spec becomes a new revision and
    the old ones stay. With ``revisionPolicy: Latest`` active enrollments move to the new revision at
    the step of the same name (removed steps are skipped); with ``Pinned`` they keep theirs.

    A generation older than the stored one of the same object (same uid) is stale - a handler that ran
    behind a newer one - and changes nothing (``stale=True``). Everything from that check to the write
    happens under one lock per Sequence, so two writers (the refresh timer beside an update, or two
    replicas) serialise and the newer generation always wins.
    """
    meta, spec = resource.metadata, resource.spec
    origin = f"Sequence {meta.namespace}/{meta.name}"
    problems = spec_problems(resource)
    if problems:
        raise InvalidSequence(f"{origin}: {'; '.join(problems)}")
    seq_id = sequence_id(meta.namespace, meta.name)
    await _lock_sequence(conn, seq_id)
    stored_generation = await _stored_generation(conn, seq_id, meta.uid)
    if stored_generation is not None and meta.generation is not None and meta.generation < stored_generation.number:
        return AppliedSequence(meta.namespace, meta.name, stored_generation.revision, changed=False, stale=True)
    try:
        bodies = resolve_step_bodies(resource, config_maps)
        check_step_bodies(bodies, meta.name)
        variants = resolve_variant_bodies(resource, bodies, config_maps)
        for position, _, index, body in variants:
            try:
                check_step_bodies([body], meta.name)
            except InvalidTemplate as error:
                detail = str(error).split(": ", 1)[-1]
                raise InvalidTemplate(f"spec.steps[{position}].variants[{index}] ({body.name}): {detail}") from None
    except InvalidTemplate as error:
        raise InvalidSequence(f"{origin}: {error}") from error
    rules = rules_of_spec(spec)
    stored = msgspec.to_builtins(spec)
    for step, body in zip(stored["steps"], bodies, strict=True):
        # The resolved bodies are part of what a revision is: a ConfigMap edit is a change.
        step["html"], step["text"] = body.html, body.text
    for position, _, index, body in variants:
        stored["steps"][position]["variants"][index].update(html=body.html, text=body.text)
    # Fields added after a Sequence was first stored are left out at their defaults, so re-applying an
    # unchanged Sequence keeps its revision instead of making a new one for a field it never set.
    for added_field, default in (
        ("displayName", None),
        ("unsubscribeScope", "Global"),
        ("doubleOptIn", False),
        ("exitWhen", None),
    ):
        if stored.get(added_field, default) == default:
            stored.pop(added_field, None)
    if stored["trigger"].get("when") is None:
        stored["trigger"].pop("when", None)
    for stored_step in stored["steps"]:
        for step_field in ("when", "waitFor", "variants"):
            if not stored_step.get(step_field):
                stored_step.pop(step_field, None)
    spec_json = msgspec.json.encode(stored).decode()
    await conn.execute(
        """INSERT INTO sequences (id, namespace, name, current_revision, paused)
           VALUES (%s, %s, %s, 1, %s)
           ON CONFLICT (id) DO NOTHING""",
        (seq_id, meta.namespace, meta.name, spec.paused),
    )
    cursor = await conn.execute(
        """SELECT r.revision AS current, r.spec = %s::jsonb AS same, s.deleted_at IS NOT NULL AS deleted
           FROM sequences s
           LEFT JOIN sequence_revisions r ON r.sequence_id = s.id AND r.revision = s.current_revision
           WHERE s.id = %s
           FOR UPDATE OF s""",
        (spec_json, seq_id),
    )
    row = await cursor.fetchone()
    assert row is not None
    current: int | None = row["current"]  # type: ignore[assignment]
    if current is not None and row["same"] and not row["deleted"]:
        await conn.execute("UPDATE sequences SET paused = %s, updated_at = now() WHERE id = %s", (spec.paused, seq_id))
        return AppliedSequence(meta.namespace, meta.name, current, changed=False)
    revision = _revision_number(current, meta.generation)
    window = msgspec.json.encode(spec.send_window).decode() if spec.send_window else None
    await conn.execute(
        """INSERT INTO sequence_revisions
               (sequence_id, revision, spec, trigger_sources, trigger_tags, trigger_all, require_consent,
                send_window, from_email, from_name, revision_policy, generation, display_name, unsubscribe_scope,
                double_opt_in, resource_uid, has_rules, reacts_to_events)
           VALUES (%s, %s, %s::jsonb, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            seq_id,
            revision,
            spec_json,
            list(spec.trigger.sources),
            list(spec.trigger.tags),
            spec.trigger.all,
            spec.require_consent,
            window,
            spec.from_.email if spec.from_ else None,
            spec.from_.name if spec.from_ else None,
            spec.revision_policy,
            meta.generation,
            spec.display_name,
            spec.unsubscribe_scope,
            spec.double_opt_in,
            meta.uid,
            rules.has_rules,
            rules.reacts_to_events,
        ),
    )
    async with conn.cursor() as cur:
        await cur.executemany(
            """INSERT INTO sequence_steps (sequence_id, revision, position, name, delay_s, subject, html, text)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            [
                (
                    seq_id,
                    revision,
                    position,
                    body.name,
                    int(parse_duration(body.delay).total_seconds()),
                    body.subject,
                    body.html,
                    body.text,
                )
                for position, body in enumerate(bodies)
            ],
        )
    if variants:
        async with conn.cursor() as cur:
            await cur.executemany(
                """INSERT INTO sequence_step_variants
                       (sequence_id, revision, position, name, weight, subject, html, text)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
                [
                    (seq_id, revision, position, body.name, weight, body.subject, body.html, body.text)
                    for position, weight, _, body in variants
                ],
            )
    await conn.execute(
        """UPDATE sequences SET current_revision = %s, paused = %s, deleted_at = NULL, updated_at = now()
           WHERE id = %s""",
        (revision, spec.paused, seq_id),
    )
    moved = completed = 0
    if spec.revision_policy == "Latest" and current is not None:
        moved, completed = await _move_enrollments_to_revision(conn, seq_id, revision)
    return AppliedSequence(meta.namespace, meta.name, revision, changed=True, moved=moved, completed=completed)


def resolve_variant_bodies(
    resource: SequenceResource, bodies: list[StepBody], config_maps: ConfigMapLookup
) -> list[tuple[int, int, int, StepBody]]:
    """Each A/B variant's whole body (its overrides over its step's resolved body) as
    ``(position, weight, index, body)``, the body named after the variant; raises InvalidTemplate
    naming ``spec.steps[i].variants[j].templateRef`` for a missing ConfigMap or key."""
    resolved = []
    namespace = resource.metadata.namespace
    for position, (step, base) in enumerate(zip(resource.spec.steps, bodies, strict=True)):
        for index, variant in enumerate(step.variants):
            html, text = variant.html, variant.text
            ref = variant.template_ref
            if ref is not None:
                where = f"spec.steps[{position}].variants[{index}].templateRef"
                data = config_maps(namespace, ref.config_map)
                if data is None:
                    raise InvalidTemplate(f"{where}.configMap: ConfigMap {namespace}/{ref.config_map} not found")
                for key, name in ((ref.html_key, "htmlKey"), (ref.text_key, "textKey")):
                    if key is not None and key not in data:
                        raise InvalidTemplate(
                            f"{where}.{name}: ConfigMap {namespace}/{ref.config_map} has no key {key!r}"
                        )
                html = data[ref.html_key] if ref.html_key is not None else html
                text = data[ref.text_key] if ref.text_key is not None else text
            body = StepBody(
                variant.name,
                base.delay,
                variant.subject or base.subject,
                html if html is not None else base.html,
                text if text is not None else base.text,
            )
            resolved.append((position, variant.weight, index, body))
    return resolved


async def _move_enrollments_to_revision(conn: Connection, seq_id: uuid.UUID, revision: int) -> tuple[int, int]:
    """Move active enrollments of older revisions to ``revision``: each continues at the first step it
    has not been sent yet whose name the new revision still has; one with no such step left completes.
    The due time of the pending step is kept."""
    cursor = await conn.execute(
        """WITH target AS (
               SELECT e.id,
                      (SELECT ns.position
                       FROM sequence_steps os
                       JOIN sequence_steps ns
                         ON ns.sequence_id = os.sequence_id AND ns.revision = %(revision)s AND ns.name = os.name
                       WHERE os.sequence_id = e.sequence_id AND os.revision = e.revision
                         AND os.position >= e.next_step
                       ORDER BY os.position
                       LIMIT 1) AS position
               FROM enrollments e
               WHERE e.sequence_id = %(sequence)s AND e.status = 'active' AND e.revision <> %(revision)s
               FOR UPDATE OF e
           )
           UPDATE enrollments e
           SET revision = %(revision)s,
               next_step = COALESCE(t.position, e.next_step),
               status = CASE WHEN t.position IS NULL THEN 'completed' ELSE 'active' END,
               next_run_at = CASE WHEN t.position IS NULL THEN NULL ELSE e.next_run_at END,
               updated_at = now()
           FROM target t
           WHERE e.id = t.id
           RETURNING t.position IS NULL AS completed""",
        {"sequence": seq_id, "revision": revision},
    )
    rows = await cursor.fetchall()
    completed = sum(1 for row in rows if row["completed"])
    return len(rows) - completed, completed


@dataclass(frozen=True)
class DeletedSequence:
    cancelled_enrollments: int
    skipped_messages: int


async def delete_sequence(conn: Connection, namespace: str, name: str, uid: str | None = None) -> DeletedSequence:
    """Stop a Sequence inside the caller's transaction: no new enrollments, active enrollments cancelled,
    queued and retrying messages skipped (a message already being sent finishes). Its rows stay for
    history; applying it again starts a new revision. Idempotent.

    With ``uid`` (the deleted Kubernetes object's), nothing happens when the stored Sequence came from
    another object of the same name: one created again while the old one's deletion was pending."""
    seq_id = sequence_id(namespace, name)
    await _lock_sequence(conn, seq_id)
    if uid is not None:
        cursor = await conn.execute(
            """SELECT r.resource_uid FROM sequences s
               JOIN sequence_revisions r ON r.sequence_id = s.id AND r.revision = s.current_revision
               WHERE s.id = %s""",
            (seq_id,),
        )
        row = await cursor.fetchone()
        if row is not None and row["resource_uid"] not in (None, uid):
            return DeletedSequence(0, 0)
    await conn.execute(
        "UPDATE sequences SET deleted_at = COALESCE(deleted_at, now()), updated_at = now() WHERE id = %s", (seq_id,)
    )
    cancelled = await conn.execute(
        """UPDATE enrollments SET status = 'cancelled', next_run_at = NULL, updated_at = now()
           WHERE sequence_id = %s AND status = 'active'""",
        (seq_id,),
    )
    skipped = await cancel_sequence_messages(conn, seq_id)
    return DeletedSequence(cancelled.rowcount, skipped)


async def mark_vanished_sequences(
    conn: Connection, existing: set[tuple[str, str]], namespaces: list[str] | None, listed_after: datetime
) -> list[tuple[str, str]]:
    """Delete (as :func:`delete_sequence` does) every live Sequence that came from the API server and
    is not in ``existing`` - the (namespace, name) of every Sequence the API server listed - in
    ``namespaces`` (None: all). Returns those deleted.

    Covers what the finalizer cannot: a finalizer removed by hand, an operator that was down while a
    Sequence was deleted. Sequences applied from files (no generation) are never touched, and neither is
    one written since ``listed_after`` (the database's time just before the listing began: a Sequence
    created meanwhile is missing from the list but not gone).
    """
    cursor = await conn.execute(
        """SELECT s.namespace, s.name FROM sequences s
           JOIN sequence_revisions r ON r.sequence_id = s.id AND r.revision = s.current_revision
           WHERE s.deleted_at IS NULL AND r.generation IS NOT NULL AND s.updated_at < %s
             AND (%s::text[] IS NULL OR s.namespace = ANY (%s::text[]))
           ORDER BY s.namespace, s.name""",
        (listed_after, namespaces, namespaces),
    )
    candidates = [(str(row["namespace"]), str(row["name"])) for row in await cursor.fetchall()]
    vanished = []
    for namespace, name in candidates:
        if (namespace, name) in existing:
            continue
        seq_id = sequence_id(namespace, name)
        # Under the lock every writer of this Sequence takes, and checked again: an apply that got in
        # between (the Sequence created again meanwhile) wins.
        await _lock_sequence(conn, seq_id)
        cursor = await conn.execute(
            "SELECT 1 FROM sequences WHERE id = %s AND deleted_at IS NULL AND updated_at < %s", (seq_id, listed_after)
        )
        if await cursor.fetchone() is None:
            continue
        await delete_sequence(conn, namespace, name)
        vanished.append((namespace, name))
    return vanished


async def _lock_sequence(conn: Connection, seq_id: uuid.UUID) -> None:
    """Serialise every writer of one Sequence until the transaction ends: a transaction-scoped advisory
    lock on its id, taken before anything is read (unlike a row lock it also covers the first apply of
    a new Sequence, and leaves no row behind when validation fails)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (str(seq_id),))


@dataclass(frozen=True)
class EnrollmentCounts:
    active: int
    completed: int
    cancelled: int


async def count_enrollments(conn: Connection, namespace: str, name: str) -> EnrollmentCounts:
    """How many enrollments of the Sequence are active, completed and cancelled."""
    cursor = await conn.execute(
        """SELECT count(*) FILTER (WHERE status = 'active') AS active,
                  count(*) FILTER (WHERE status = 'completed') AS completed,
                  count(*) FILTER (WHERE status = 'cancelled') AS cancelled
           FROM enrollments WHERE sequence_id = %s""",
        (sequence_id(namespace, name),),
    )
    row = await cursor.fetchone()
    assert row is not None
    return EnrollmentCounts(int(row["active"]), int(row["completed"]), int(row["cancelled"]))  # type: ignore[call-overload]


async def apply_sequence_files(settings: DatabaseSettings, paths: list[Path]) -> list[AppliedSequence]:
    """Validate every Sequence in ``paths`` first, then apply them all in one transaction (all or nothing);
    ConfigMaps in the same files resolve ``templateRef``s."""
    manifests = load_manifests(paths)
    async with command_transaction(settings) as conn:
        return [await apply_sequence(conn, resource, manifests.config_map) for resource in manifests.sequences]
