"""A Sequence's step bodies made concrete: ConfigMap references resolved, every template compiled in
the sandbox and rendered against a sample lead, before anything is stored.

The failures are :class:`~services.common.sequences.InvalidSequence` errors naming the field, so the
CLI prints them and the operator turns them into a ``Valid=False`` condition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proto.sequence import SequenceResource
from services.dispatcher.render import RenderError, render_step

# ConfigMap data by (namespace, name); None when there is no such ConfigMap.
ConfigMapLookup = Callable[[str, str], Mapping[str, str] | None]

# What a template sees, with exactly the keys the dispatcher renders with (services.dispatcher.dispatch):
# a lead with every optional field, and one without, since templates are strict about undefined names.
SAMPLE_CONTEXTS: tuple[dict[str, Any], ...] = tuple(
    {
        "lead": {"email": "ada@example.com", "first_name": first, "last_name": last, "source": "website"},
        "sequence": {"name": "sample", "step": "sample"},
    }
    for first, last in (("Ada", "Lovelace"), (None, None))
)


class InvalidTemplate(Exception):
    """A step body that cannot be resolved or rendered; the message names the field."""


@dataclass(frozen=True)
class StepBody:
    """A step with its HTML and text templates, wherever they came from."""

    name: str
    delay: str
    subject: str
    html: str | None
    text: str | None


def no_config_maps(namespace: str, name: str) -> Mapping[str, str] | None:
    return None


def resolve_step_bodies(resource: SequenceResource, config_maps: ConfigMapLookup) -> list[StepBody]:
    """Every step's body, ConfigMap references replaced by their content; raises InvalidTemplate naming
    ``spec.steps[i].templateRef...`` for a missing ConfigMap or key."""
    bodies = []
    namespace = resource.metadata.namespace
    for index, step in enumerate(resource.spec.steps):
        html, text = step.html, step.text
        ref = step.template_ref
        if ref is not None:
            where = f"spec.steps[{index}].templateRef"
            data = config_maps(namespace, ref.config_map)
            if data is None:
                raise InvalidTemplate(f"{where}.configMap: ConfigMap {namespace}/{ref.config_map} not found")
            for key, field in ((ref.html_key, "htmlKey"), (ref.text_key, "textKey")):
                if key is not None and key not in data:
                    raise InvalidTemplate(f"{where}.{field}: ConfigMap {namespace}/{ref.config_map} has no key {key!r}")
            html = data[ref.html_key] if ref.html_key is not None else html
            text = data[ref.text_key] if ref.text_key is not None else text
        bodies.append(StepBody(step.name, step.delay, step.subject, html, text))
    return bodies


def check_step_bodies(bodies: list[StepBody]) -> None:
    """Render every step against sample leads in the sandbox; raises InvalidTemplate naming the step."""
    for index, body in enumerate(bodies):
        for context in SAMPLE_CONTEXTS:
            try:
                render_step(body.subject, body.html, body.text, context)
            except RenderError as error:
                raise InvalidTemplate(f"spec.steps[{index}] ({body.name}): {error}") from error
