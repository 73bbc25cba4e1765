"""Sequences in PostgreSQL: applying a Sequence resource as an immutable revision, and reading
Sequence resources from YAML files.

``apply_sequence`` is the single writer of the sequence tables: ``healingwork sequences apply`` and
``healingwork dev`` call it today, the operator will call it for resources from the Kubernetes API.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgspec
import yaml

from proto.sequence import KIND, SequenceResource
from services.common.config import DatabaseSettings
from services.common.db import Connection, connect
from services.common.durations import parse_duration

SEQUENCE_NAMESPACE_UUID = uuid.UUID("5b0f9c52-3f3c-4a51-9a36-0f3e3c1c7a11")


class InvalidSequence(Exception):
    """A Sequence document that cannot be applied; the message names the file and the field."""


@dataclass(frozen=True)
class AppliedSequence:
    namespace: str
    name: str
    revision: int
    changed: bool


def sequence_id(namespace: str, name: str) -> uuid.UUID:
    """The stable id of a Sequence, derived from its namespace and name."""
    return uuid.uuid5(SEQUENCE_NAMESPACE_UUID, f"{namespace}/{name}")


def parse_sequence_document(document: object, origin: str) -> SequenceResource:
    """Validate one decoded YAML document as a Sequence; raises InvalidSequence naming the field."""
    try:
        resource = msgspec.convert(document, SequenceResource)
    except msgspec.ValidationError as error:
        raise InvalidSequence(f"{origin}: {error}") from error
    names = [step.name for step in resource.spec.steps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidSequence(
            f"{origin}: step names must be unique, repeated: {', '.join(duplicates)} - at `$.spec.steps`"
        )
    for index, step in enumerate(resource.spec.steps):
        if step.html is None and step.text is None:
            raise InvalidSequence(f"{origin}: a step needs html or text - at `$.spec.steps[{index}]`")
    return resource


def load_sequence_files(paths: list[Path]) -> list[SequenceResource]:
    """Read every Sequence document from the given files and directories (``*.yaml``/``*.yml``);
    ``-`` reads standard input.

    Documents of other kinds are ignored, so a folder of mixed manifests can be pointed at.
    """
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
    resources = []
    for file in files:
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text()
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError as error:
            raise InvalidSequence(f"{file}: not valid YAML ({error})") from error
        for index, document in enumerate(documents):
            if isinstance(document, dict) and document.get("kind") == KIND:
                resources.append(parse_sequence_document(document, f"{file} (document {index + 1})"))
    return resources


async def apply_sequence(conn: Connection, resource: SequenceResource) -> AppliedSequence:
    """Store ``resource`` as the Sequence's current revision, inside the caller's transaction.

    An unchanged spec keeps the current revision (applying is idempotent); a changed spec becomes
    revision n+1 and the old revisions stay, because enrollments may still run them.
    """
    meta, spec = resource.metadata, resource.spec
    seq_id = sequence_id(meta.namespace, meta.name)
    spec_json = msgspec.json.encode(spec).decode()
    await conn.execute(
        """INSERT INTO sequences (id, namespace, name, current_revision, paused)
           VALUES (%s, %s, %s, 1, %s)
           ON CONFLICT (id) DO NOTHING""",
        (seq_id, meta.namespace, meta.name, spec.paused),
    )
    cursor = await conn.execute(
        """SELECT s.current_revision, r.spec = %s::jsonb AS same, s.deleted_at IS NOT NULL AS deleted
           FROM sequences s
           LEFT JOIN sequence_revisions r ON r.sequence_id = s.id AND r.revision = s.current_revision
           WHERE s.id = %s
           FOR UPDATE OF s""",
        (spec_json, seq_id),
    )
    row = await cursor.fetchone()
    assert row is not None
    current = int(row["current_revision"])  # type: ignore[call-overload]
    exists = row["same"] is not None
    if exists and row["same"] and not row["deleted"]:
        await conn.execute("UPDATE sequences SET paused = %s, updated_at = now() WHERE id = %s", (spec.paused, seq_id))
        return AppliedSequence(meta.namespace, meta.name, current, changed=False)
    revision = current + 1 if exists else 1
    await conn.execute(
        """INSERT INTO sequence_revisions
               (sequence_id, revision, spec, trigger_sources, trigger_tags, trigger_all, require_consent)
           VALUES (%s, %s, %s::jsonb, %s, %s, %s, %s)""",
        (
            seq_id,
            revision,
            spec_json,
            list(spec.trigger.sources),
            list(spec.trigger.tags),
            spec.trigger.all,
            spec.require_consent,
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
                    step.name,
                    int(parse_duration(step.delay).total_seconds()),
                    step.subject,
                    step.html,
                    step.text,
                )
                for position, step in enumerate(spec.steps)
            ],
        )
    await conn.execute(
        """UPDATE sequences SET current_revision = %s, paused = %s, deleted_at = NULL, updated_at = now()
           WHERE id = %s""",
        (revision, spec.paused, seq_id),
    )
    return AppliedSequence(meta.namespace, meta.name, revision, changed=True)


async def apply_sequence_files(settings: DatabaseSettings, paths: list[Path]) -> list[AppliedSequence]:
    """Validate every Sequence in ``paths`` first, then apply them all in one transaction (all or nothing)."""
    resources = load_sequence_files(paths)
    conn = await connect(settings)
    async with conn, conn.transaction():
        return [await apply_sequence(conn, resource) for resource in resources]
