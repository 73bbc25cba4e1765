"""The Sequence CRD: the examples are valid against it (schema and CEL rules), invalid Sequences are
refused by it and by the same rules in Python, and it describes exactly the fields of the Structs."""

from __future__ import annotations

import copy
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from proto.sequence import SequenceSpec
from services.common.sequence_templates import check_step_bodies, resolve_step_bodies
from services.common.sequences import InvalidSequence, load_manifests, parse_sequence_document
from tests.support.crd import crd, crd_problems, openapi_schema

EXAMPLES = Path(__file__).resolve().parents[2] / "k8s" / "examples"


def example_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "Sequence")
    return documents


def document_named(name: str) -> dict[str, Any]:
    [document] = [d for d in example_documents() if d["metadata"]["name"] == name]
    return copy.deepcopy(document)


# --- the CRD itself --------------------------------------------------------------------------------


def test_the_crd_is_namespaced_with_short_name_status_subresource_and_printer_columns() -> None:
    spec = crd()["spec"]
    [version] = spec["versions"]

    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == ("healingwork.io", "Namespaced", "Sequence")
    assert spec["names"]["shortNames"] == ["seq"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 0] == [
        "Ready",
        "Steps",
        "Active",
        "Completed",
        "Age",
    ]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Message"]["priority"] == 1


def _crd_fields(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        name: _crd_fields(sub["items"] if sub.get("type") == "array" else sub)
        for name, sub in (schema.get("properties") or {}).items()
    }


def _struct_fields(kind: Any) -> dict[str, Any]:
    fields = {}
    for field in msgspec.structs.fields(kind):
        annotation = field.type
        inner: Any = None
        for candidate in (annotation, *typing.get_args(annotation)):
            for arg in (candidate, *typing.get_args(candidate)):
                if isinstance(arg, type) and issubclass(arg, msgspec.Struct):
                    inner = arg
        fields[field.encode_name] = _struct_fields(inner) if inner else {}
    return fields


def test_the_crd_spec_has_exactly_the_fields_of_the_structs() -> None:
    spec_schema = openapi_schema()["properties"]["spec"]

    assert _crd_fields(spec_schema) == _struct_fields(SequenceSpec)


# --- the examples ----------------------------------------------------------------------------------


def test_there_are_at_least_three_examples() -> None:
    assert {"welcome", "webinar-follow-up", "re-engagement", "welcome-ab"} <= {
        d["metadata"]["name"] for d in example_documents()
    }


def test_the_reacting_examples_use_every_condition_field() -> None:
    re_engagement, ab = document_named("re-engagement"), document_named("welcome-ab")
    assert "purchased" in re_engagement["spec"]["exitWhen"]
    assert ab["spec"]["trigger"]["when"]
    assert ab["spec"]["steps"][0]["variants"]
    assert ab["spec"]["steps"][1]["when"]
    assert ab["spec"]["steps"][2]["waitFor"]


@pytest.mark.parametrize("document", example_documents(), ids=lambda d: d["metadata"]["name"])
def test_every_example_is_valid_against_the_crd(document: dict[str, Any]) -> None:
    assert crd_problems(document) == []


def test_every_example_parses_and_its_templates_render() -> None:
    manifests = load_manifests([EXAMPLES])

    assert len(manifests.sequences) == len(example_documents())
    for resource in manifests.sequences:
        check_step_bodies(resolve_step_bodies(resource, manifests.config_map), resource.metadata.name)


# --- invalid Sequences -----------------------------------------------------------------------------

Change = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Change:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()


def _both(first: Change, second: Change) -> Change:
    def change(document: dict[str, Any]) -> None:
        first(document)
        second(document)

    return change


INVALID: list[tuple[str, str, Change, str]] = [
    ("duplicate step names", "welcome", _set("spec.steps.1.name", "hello"), "Duplicate value"),
    ("empty trigger", "welcome", _set("spec.trigger", {}), "a trigger needs sources, tags, or all: true"),
    ("all with sources", "welcome", _set("spec.trigger.all", True), "leave sources and tags out"),
    ("step without a body", "welcome", _set("spec.steps.0.html", _DELETE), "a step needs html, text or templateRef"),
    (
        "html inline and from a ConfigMap",
        "re-engagement",
        _set("spec.steps.0.html", "<p>x</p>"),
        "inline or as templateRef.htmlKey, not both",
    ),
    (
        "templateRef without keys",
        "re-engagement",
        _set("spec.steps.1.templateRef", {"configMap": "re-engagement-templates"}),
        "a templateRef needs htmlKey or textKey",
    ),
    (
        "window ending before it starts",
        "webinar-follow-up",
        _set("spec.sendWindow.end", "08:00"),
        "the window's start (09:00) must be before its end (08:00)",
    ),
    (
        "fallback time zone lead",
        "webinar-follow-up",
        _set("spec.sendWindow.fallbackTimezone", "lead"),
        "fallbackTimezone must be an IANA time zone",
    ),
    ("delay in weeks", "welcome", _set("spec.steps.1.delay", "1w"), "delay"),
    ("delay over 365 days", "welcome", _set("spec.steps.1.delay", "999999999d"), "365d"),
    ("delay of 31 digits", "welcome", _set("spec.steps.1.delay", "9" * 31 + "s"), "365d"),
    ("weekday misspelled", "webinar-follow-up", _set("spec.sendWindow.days", ["Monday"]), "days"),
    ("unknown revision policy", "welcome", _set("spec.revisionPolicy", "Newest"), "revisionPolicy"),
    ("no subject", "welcome", _set("spec.steps.0.subject", _DELETE), "subject"),
    ("sender without address", "webinar-follow-up", _set("spec.from", {"name": "Events"}), "email"),
    ("no steps", "welcome", _set("spec.steps", []), "steps"),
    ("clock time out of range", "webinar-follow-up", _set("spec.sendWindow.start", "25:00"), "start"),
    ("unknown unsubscribe scope", "welcome", _set("spec.unsubscribeScope", "Everything"), "unsubscribeScope"),
    ("display name of two lines", "welcome", _set("spec.displayName", "Tips\nBcc: x@example.com"), "displayName"),
    ("empty display name", "welcome", _set("spec.displayName", ""), "displayName"),
    ("html body over its maximum", "welcome", _set("spec.steps.0.html", "x" * 131073), "html"),
    (
        "inline bodies over the total one object can hold",
        "welcome",
        _both(_set("spec.steps.0.html", "<" * 100_000), _set("spec.steps.1.html", "<" * 100_000)),
        "the inline subjects and bodies of all steps exceed 196608 characters in total",
    ),
]


@pytest.mark.parametrize(("base", "change", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_sequence_is_refused_by_the_crd_and_by_the_parser(base: str, change: Change, expected: str) -> None:
    document = document_named(base)
    change(document)

    problems = crd_problems(document)
    with pytest.raises(InvalidSequence) as raised:
        parse_sequence_document(document, "seq.yaml")

    assert problems, "the CRD accepted it"
    assert any(expected in problem for problem in problems), problems
    assert expected in str(raised.value)


def test_an_unknown_time_zone_passes_the_schema_but_not_the_parser() -> None:
    document = document_named("webinar-follow-up")
    document["spec"]["sendWindow"]["timezone"] = "Mars/Olympus_Mons"

    assert crd_problems(document) == []  # a pattern cannot list tzdata; the operator reports it
    with pytest.raises(InvalidSequence, match="unknown time zone 'Mars/Olympus_Mons'"):
        parse_sequence_document(document, "seq.yaml")


def test_the_crd_is_a_valid_kubernetes_manifest() -> None:
    import kubernetes_validate

    kubernetes_validate.validate(crd(), kubernetes_validate.latest_version(), strict=True)


def test_display_name_and_unsubscribe_scope_are_optional_with_global_the_default() -> None:
    document = document_named("welcome")
    document["spec"]["displayName"] = "Welcome series <b>&</b>"

    resource = parse_sequence_document(document, "seq.yaml")

    assert crd_problems(document) == []
    assert resource.spec.display_name == "Welcome series <b>&</b>"
    assert resource.spec.unsubscribe_scope == "Global"
    assert parse_sequence_document(document_named("welcome"), "seq.yaml").spec.display_name is None


def test_steps_are_a_list_map_keyed_by_name_without_a_pairwise_cel_rule() -> None:
    steps = openapi_schema()["properties"]["spec"]["properties"]["steps"]

    assert (steps["x-kubernetes-list-type"], steps["x-kubernetes-list-map-keys"]) == ("map", ["name"])
    assert "name" in steps["items"]["required"]
    assert "x-kubernetes-validations" not in steps


def test_the_size_rule_and_the_struct_share_their_numbers() -> None:
    from proto.sequence import MAX_BODY_CHARACTERS, MAX_INLINE_CHARACTERS

    spec = openapi_schema()["properties"]["spec"]
    step = spec["properties"]["steps"]["items"]["properties"]
    [size_rule] = spec["x-kubernetes-validations"]

    assert step["html"]["maxLength"] == step["text"]["maxLength"] == MAX_BODY_CHARACTERS
    assert size_rule["rule"].endswith(f"<= {MAX_INLINE_CHARACTERS}")
    assert size_rule["fieldPath"] == ".steps"


def test_a_cel_problem_names_the_field_it_is_about() -> None:
    document = document_named("webinar-follow-up")
    document["spec"]["sendWindow"].update(start="22:00", end="06:00", fallbackTimezone="lead")

    assert crd_problems(document) == [
        ".spec.sendWindow.end: the window's start (22:00) must be before its end (06:00);"
        " windows across midnight are not supported",
        ".spec.sendWindow.fallbackTimezone: fallbackTimezone must be an IANA time zone, not lead",
    ]
