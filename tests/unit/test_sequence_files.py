"""parse_sequence_document and load_sequence_files: Sequence YAML validated before anything is stored."""

from __future__ import annotations

import copy
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from proto.sequence import SequenceResource
from services.common.sequence_preview import parse_preview_lead, preview_sequence
from services.common.sequence_templates import no_config_maps
from services.common.sequences import InvalidSequence, load_sequence_files, parse_sequence_document, sequence_id

EXAMPLE = Path(__file__).resolve().parents[2] / "k8s" / "examples" / "welcome.yaml"

SEQUENCE_YAML = """\
apiVersion: healingwork.io/v1alpha1
kind: Sequence
metadata:
  name: {name}
spec:
  trigger:
    tags: [webinar]
  steps:
    - name: reminder
      delay: 1h30m
      subject: "See you soon"
      text: "Hi {{{{ lead.first_name }}}}"
"""

CONFIG_MAP_YAML = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: not-a-sequence
data:
  steps: "whatever"
"""


def minimal_document(**spec_overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": "onboarding"},
        "spec": {
            "trigger": {"sources": ["website"]},
            "steps": [{"name": "hello", "subject": "Hello", "text": "Hi"}],
        },
    }
    document["spec"].update(spec_overrides)
    return document


def with_step(**step: Any) -> dict[str, Any]:
    return minimal_document(steps=[{"name": "hello", "subject": "Hello", "text": "Hi", **step}])


def invalid_message(document: object, origin: str = "seq.yaml") -> str:
    with pytest.raises(InvalidSequence) as raised:
        parse_sequence_document(document, origin)
    return str(raised.value)


# --- the example ----------------------------------------------------------------------------------


def test_the_welcome_example_loads() -> None:
    (resource,) = load_sequence_files([EXAMPLE])

    assert resource.metadata.name == "welcome"
    assert resource.metadata.namespace == "default"
    assert resource.spec.trigger.sources == ["website"]
    assert [step.name for step in resource.spec.steps] == ["hello", "day-2"]
    assert [step.delay for step in resource.spec.steps] == ["0s", "48h"]
    assert resource.spec.steps[0].text is None
    assert resource.spec.steps[1].text is not None
    assert resource.spec.require_consent is True
    assert resource.spec.paused is False


# --- parse_sequence_document ----------------------------------------------------------------------


def test_minimal_document_gets_its_defaults() -> None:
    resource = parse_sequence_document(minimal_document(), "seq.yaml")

    assert isinstance(resource, SequenceResource)
    assert resource.metadata.namespace == "default"
    assert resource.spec.steps[0].delay == "0s"
    assert resource.spec.trigger.all is False
    assert resource.spec.require_consent is True


def test_camel_case_fields_map_to_the_spec() -> None:
    resource = parse_sequence_document(minimal_document(requireConsent=False, paused=True), "seq.yaml")

    assert resource.spec.require_consent is False
    assert resource.spec.paused is True


def test_duplicate_step_names_are_rejected_naming_the_repeated_step() -> None:
    document = minimal_document(
        steps=[
            {"name": "hello", "subject": "A", "text": "a"},
            {"name": "later", "subject": "B", "text": "b"},
            {"name": "hello", "subject": "C", "text": "c"},
        ]
    )

    message = invalid_message(document)

    assert message.startswith("seq.yaml: ")
    assert "Duplicate value: step name 'hello'" in message
    assert "`$.spec.steps[2]`" in message


def test_step_with_neither_html_nor_text_is_rejected_naming_the_step() -> None:
    document = minimal_document(
        steps=[{"name": "ok", "subject": "A", "html": "<p>a</p>"}, {"name": "empty", "subject": "B"}]
    )

    assert "`$.spec.steps[1]`" in invalid_message(document)


@pytest.mark.parametrize("body", [{"html": "<p>x</p>"}, {"text": "x"}, {"html": "<p>x</p>", "text": "x"}])
def test_step_with_html_or_text_is_accepted(body: dict[str, str]) -> None:
    document = minimal_document(steps=[{"name": "one", "subject": "S", **body}])

    assert parse_sequence_document(document, "seq.yaml").spec.steps[0].name == "one"


def test_unknown_step_field_is_rejected_naming_it() -> None:
    message = invalid_message(with_step(colour="blue"))

    assert "colour" in message
    assert "$.spec.steps[0]" in message


def test_unknown_spec_field_is_rejected_naming_it() -> None:
    assert "retries" in invalid_message(minimal_document(retries=3))


def test_snake_case_field_is_rejected_as_unknown() -> None:
    assert "require_consent" in invalid_message(minimal_document(require_consent=False))


@pytest.mark.parametrize("delay", ["1w", "-1h", "5", "", "1.5h", "soon"])
def test_invalid_delay_is_rejected_naming_the_field(delay: str) -> None:
    assert "$.spec.steps[0].delay" in invalid_message(with_step(delay=delay))


@pytest.mark.parametrize("name", ["Hello", "hello world", "-hello", "x" * 65, ""])
def test_step_name_must_be_a_slug(name: str) -> None:
    assert "$.spec.steps[0].name" in invalid_message(with_step(name=name))


def test_empty_steps_are_rejected() -> None:
    assert "$.spec.steps" in invalid_message(minimal_document(steps=[]))


def test_empty_subject_is_rejected() -> None:
    assert "$.spec.steps[0].subject" in invalid_message(with_step(subject=""))


@pytest.mark.parametrize(
    ("field", "value"), [("apiVersion", "healingwork.io/v2"), ("kind", "Sequences"), ("metadata", {})]
)
def test_wrong_envelope_is_rejected(field: str, value: object) -> None:
    document = minimal_document()
    document[field] = value

    with pytest.raises(InvalidSequence):
        parse_sequence_document(document, "seq.yaml")


def test_a_document_that_is_not_a_mapping_is_rejected() -> None:
    assert invalid_message(["not", "a", "mapping"]).startswith("seq.yaml: ")


def test_the_error_names_the_origin() -> None:
    assert invalid_message(with_step(delay="1w"), origin="k8s/a.yaml (document 3)").startswith(
        "k8s/a.yaml (document 3): "
    )


# --- load_sequence_files --------------------------------------------------------------------------


def test_non_sequence_documents_in_the_same_file_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text("---\n".join([CONFIG_MAP_YAML, SEQUENCE_YAML.format(name="webinar"), "", "- a list\n"]))

    (resource,) = load_sequence_files([path])

    assert resource.metadata.name == "webinar"
    assert resource.spec.steps[0].delay == "1h30m"
    assert resource.spec.steps[0].text == "Hi {{ lead.first_name }}"


def test_every_sequence_document_of_a_file_is_loaded_in_order(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(SEQUENCE_YAML.format(name="first") + "---\n" + SEQUENCE_YAML.format(name="second"))

    assert [r.metadata.name for r in load_sequence_files([path])] == ["first", "second"]


def test_a_directory_loads_its_yaml_files_in_name_order_and_skips_others(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(SEQUENCE_YAML.format(name="bee"))
    (tmp_path / "a.yaml").write_text(SEQUENCE_YAML.format(name="ay"))
    (tmp_path / "c.txt").write_text(SEQUENCE_YAML.format(name="ignored"))
    (tmp_path / "README.md").write_text("# not yaml: [")

    assert [r.metadata.name for r in load_sequence_files([tmp_path])] == ["ay", "bee"]


def test_files_and_directories_can_be_mixed(tmp_path: Path) -> None:
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "x.yaml").write_text(SEQUENCE_YAML.format(name="from-dir"))
    single = tmp_path / "single.yaml"
    single.write_text(SEQUENCE_YAML.format(name="from-file"))

    assert [r.metadata.name for r in load_sequence_files([single, folder])] == ["from-file", "from-dir"]


def test_a_missing_path_raises_invalid_sequence_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(InvalidSequence, match="no such file or directory") as raised:
        load_sequence_files([EXAMPLE, missing])

    assert str(missing) in str(raised.value)


def test_invalid_yaml_raises_invalid_sequence_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("kind: Sequence\nspec: [unclosed\n")

    with pytest.raises(InvalidSequence, match="not valid YAML") as raised:
        load_sequence_files([path])

    assert str(path) in str(raised.value)


def test_an_invalid_sequence_names_its_file_and_document_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    bad = SEQUENCE_YAML.format(name="bad").replace("delay: 1h30m", "delay: 1w")
    path.write_text(CONFIG_MAP_YAML + "---\n" + bad)

    with pytest.raises(InvalidSequence) as raised:
        load_sequence_files([path])

    assert str(raised.value).startswith(f"{path} (document 2): ")
    assert "delay" in str(raised.value)


def test_an_empty_directory_loads_nothing(tmp_path: Path) -> None:
    assert load_sequence_files([tmp_path]) == []


def test_the_example_is_equal_to_its_parsed_yaml() -> None:
    document = yaml.safe_load(EXAMPLE.read_text())

    assert load_sequence_files([EXAMPLE]) == [parse_sequence_document(copy.deepcopy(document), "x")]


# --- sequence_id ----------------------------------------------------------------------------------


def test_sequence_id_is_stable_and_depends_on_namespace_and_name() -> None:
    assert sequence_id("default", "welcome") == sequence_id("default", "welcome")
    assert sequence_id("default", "welcome") != sequence_id("other", "welcome")
    assert sequence_id("default", "welcome") != sequence_id("default", "welcome-2")


def test_dash_reads_sequences_from_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(EXAMPLE.read_text()))

    [resource] = load_sequence_files([Path("-")])

    assert resource.metadata.name == "welcome"


# --- preview_sequence -------------------------------------------------------------------------------


def test_preview_reads_each_step_back_from_the_message_the_dispatcher_would_send() -> None:
    (resource,) = load_sequence_files([EXAMPLE])
    lead = parse_preview_lead('{"first_name": "Ada", "timezone": "Europe/Berlin"}')

    first, second = preview_sequence(resource, lead, datetime(2026, 3, 27, 15, tzinfo=UTC), no_config_maps)

    headers = dict(first.headers)
    assert headers["Subject"] == "Welcome to healingwork, Ada"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Date" not in headers
    assert first.html is not None
    assert "/t/o/" in first.html
    assert "Unsubscribe: https://links.example.com/u/" in first.text
    assert (first.send_at, first.local_send_at.isoformat()) == (
        datetime(2026, 3, 27, 15, tzinfo=UTC),
        "2026-03-27T16:00:00+01:00",
    )
    assert second.send_at == datetime(2026, 3, 29, 15, tzinfo=UTC)
    assert second.local_send_at.isoformat() == "2026-03-29T17:00:00+02:00"  # after the DST switch
    assert second.zone_label == "Europe/Berlin, the lead's time zone"


def test_a_preview_lead_with_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(InvalidSequence, match="--lead: timezone 'Mars/Olympus' is not an IANA time zone"):
        parse_preview_lead('{"timezone": "Mars/Olympus"}')
