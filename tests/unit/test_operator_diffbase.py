"""kopf's diff base for Sequences: digests in one small annotation instead of a full copy of the spec,
with the changed part still detected (kopf's own diff over what ``fetch`` returns)."""

from __future__ import annotations

import copy
import json
from typing import Any

import kopf
from kopf._cogs.structs import diffs

from operators.sequence.diffbase import LEGACY_ANNOTATION, DigestDiffBaseStorage


def sequence(html: str = "<p>Hi</p>", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": "welcome", "namespace": "default", "labels": labels or {"team": "growth"}},
        "spec": {"trigger": {"all": True}, "steps": [{"name": "hello", "subject": "Hi", "html": html}]},
        "status": {"revision": 1},
    }


def handled(storage: DigestDiffBaseStorage, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` as it is after kopf handled it: the patch kopf would send, applied."""
    patch = kopf.Patch()
    storage.store(body=kopf.Body(raw), patch=patch, essence=storage.build(body=kopf.Body(raw)))
    result = copy.deepcopy(raw)
    annotations = result["metadata"].setdefault("annotations", {})
    for key, value in patch["metadata"]["annotations"].items():
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
    return result


def changed_fields(storage: DigestDiffBaseStorage, raw: dict[str, Any]) -> set[tuple[str, ...]]:
    body = kopf.Body(raw)
    old, new = storage.fetch(body=body), storage.build(body=body)
    return {tuple(change.field[:1]) for change in diffs.diff(old, new)}


def test_the_stored_diff_base_is_a_small_digest_whatever_the_size_of_the_spec() -> None:
    storage = DigestDiffBaseStorage()

    stored = handled(storage, sequence(html="<p>" + "x" * 120_000 + "</p>"))

    value = stored["metadata"]["annotations"]["healingwork.io/last-handled-digest"]
    assert len(value) < 300
    assert set(json.loads(value)) == {"spec", "metadata"}
    assert not any(key.startswith("kopf.zalando.org/last-handled") for key in stored["metadata"]["annotations"])


def test_an_unchanged_object_shows_no_change() -> None:
    storage = DigestDiffBaseStorage()
    stored = handled(storage, sequence())
    stored["status"] = {"revision": 7}  # status writes are not changes

    assert changed_fields(storage, stored) == set()


def test_a_spec_edit_shows_as_a_spec_change_only() -> None:
    storage = DigestDiffBaseStorage()
    stored = handled(storage, sequence())
    stored["spec"]["steps"][0]["html"] = "<p>Hello again</p>"

    assert changed_fields(storage, stored) == {("spec",)}


def test_a_label_edit_is_not_a_spec_change() -> None:
    storage = DigestDiffBaseStorage()
    stored = handled(storage, sequence())
    stored["metadata"]["labels"] = {"team": "sales"}

    assert changed_fields(storage, stored) == {("metadata",)}


def test_an_object_never_handled_has_no_diff_base() -> None:
    assert DigestDiffBaseStorage().fetch(body=kopf.Body(sequence())) is None


def test_kopfs_full_copy_is_read_once_then_replaced_by_the_digest() -> None:
    storage = DigestDiffBaseStorage()
    raw = sequence()
    raw["metadata"]["annotations"] = {
        LEGACY_ANNOTATION: json.dumps({"spec": raw["spec"], "metadata": {"labels": raw["metadata"]["labels"]}})
    }

    assert changed_fields(storage, raw) == set()  # an upgraded operator does not re-handle the Sequence
    stored = handled(storage, raw)
    assert LEGACY_ANNOTATION not in stored["metadata"]["annotations"]
    assert changed_fields(storage, stored) == set()
