"""Where kopf keeps the "last handled" state of a Sequence: digests in one small annotation, not a copy.

kopf compares an object with the state it last handled to tell a real change from a status write. By
default it keeps that state as a full JSON copy of the spec in the ``kopf.zalando.org/last-handled-
configuration`` annotation; the annotations of an object are capped at 256 KiB in total, so a large
inline Sequence could not be patched at all (and the copy doubled the object in etcd). This storage
keeps one SHA-256 digest per top-level part of the essence (``spec``, ``metadata``) in
``healingwork.io/last-handled-digest``: about 200 bytes, whatever the Sequence's size.

kopf's handlers only need to know *whether* (and where) something changed, not the old values: the
operator's handlers reconcile the whole body and never read ``old`` or ``diff``. So ``fetch`` rebuilds
an "old" essence from the current object, with every part whose digest no longer matches replaced by a
marker; kopf's diff then names exactly the parts that changed (``spec`` for ``on.update(field="spec")``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

import kopf

PREFIX, KEY = "healingwork.io", "last-handled-digest"
# kopf's default storage; read once so an upgraded operator does not re-handle every Sequence, then dropped.
LEGACY_ANNOTATION = "kopf.zalando.org/last-handled-configuration"
CHANGED_MARKER = "healingwork.io/changed-since-digest"


def digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base as one digest per part of the essence (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(prefix=PREFIX, key=KEY)

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        essence = super().build(body=body, extra_fields=extra_fields)
        annotations = cast(dict[str, Any], essence).get("metadata", {}).get("annotations", {})
        annotations.pop(LEGACY_ANNOTATION, None)
        self.remove_empty_stanzas(essence)
        return essence

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        annotations = body.metadata.annotations
        encoded = next((annotations[k] for k in self.make_keys(self.key, body=body) if k in annotations), None)
        if encoded is None:
            legacy = annotations.get(LEGACY_ANNOTATION)
            return cast(kopf.BodyEssence, json.loads(legacy)) if legacy else None
        digests: dict[str, str] = json.loads(encoded)
        current = cast(dict[str, Any], self.build(body=body))
        old = {
            part: current[part] if part in current and digest(current[part]) == value else {CHANGED_MARKER: value}
            for part, value in digests.items()
        }
        return cast(kopf.BodyEssence, old)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        digests = {part: digest(value) for part, value in cast(dict[str, Any], essence).items()}
        encoded = json.dumps(digests, sort_keys=True, separators=(",", ":"))
        for full_key in self.make_keys(self.key, body=body):
            patch.metadata.annotations[full_key] = encoded
        if LEGACY_ANNOTATION in body.metadata.annotations:
            patch.metadata.annotations[LEGACY_ANNOTATION] = None  # the full copy goes away
        self._store_marker(prefix=self.prefix, patch=patch, body=body)
