"""A Sequence's step bodies made concrete: ConfigMap references resolved, and every step composed for
sample leads exactly as the dispatcher composes it (``services.common.compose``: the same template
context, sandbox, limits and links), before anything is stored. So a template is accepted here if and
only if the dispatcher can send it (for leads like the samples).

The failures are :class:`~services.common.sequences.InvalidSequence` errors naming the field, so the
CLI prints them and the operator turns them into a ``Valid=False`` condition.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proto.sequence import TEMPLATES_LABEL, TEMPLATES_LABEL_VALUE, SequenceResource
from services.common.compose import ComposeSettings, MessageIdentity, StepContent, compose_email
from services.common.templates import RenderError, TemplateLead

# ConfigMap data by (namespace, name); None when there is no such ConfigMap.
ConfigMapLookup = Callable[[str, str], Mapping[str, str] | None]

# A lead with every optional field, and one without, since templates are strict about undefined names.
SAMPLE_LEADS = (
    TemplateLead(email="ada@example.com", first_name="Ada", last_name="Lovelace", source="website"),
    TemplateLead(email="ada@example.com", first_name=None, last_name=None, source="website"),
)
# Stand-ins for the dispatcher's settings: what they change (link hosts, tokens) has no bearing on
# whether a template renders.
SAMPLE_SETTINGS = ComposeSettings(
    public_base_url="https://links.example.com",
    hmac_secret="sample-secret-for-checking-templates-only",  # noqa: S106 - not a secret
    from_email="sender@example.com",
    from_name="Sample sender",
)
SAMPLE_MESSAGE = MessageIdentity(uuid.UUID(int=0))


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
                raise InvalidTemplate(
                    f"{where}.configMap: ConfigMap {namespace}/{ref.config_map} not found"
                    f" (only ConfigMaps labelled {TEMPLATES_LABEL}={TEMPLATES_LABEL_VALUE} are read)"
                )
            for key, field in ((ref.html_key, "htmlKey"), (ref.text_key, "textKey")):
                if key is not None and key not in data:
                    raise InvalidTemplate(f"{where}.{field}: ConfigMap {namespace}/{ref.config_map} has no key {key!r}")
            html = data[ref.html_key] if ref.html_key is not None else html
            text = data[ref.text_key] if ref.text_key is not None else text
        bodies.append(StepBody(step.name, step.delay, step.base_subject, html, text))
    return bodies


def check_step_bodies(bodies: list[StepBody], sequence_name: str) -> None:
    """Compose every step for the sample leads as the dispatcher would; raises InvalidTemplate naming the
    step and the error (a template that fails, or a part over its size limit)."""
    for index, body in enumerate(bodies):
        step = StepContent(sequence_name, body.name, body.subject, body.html, body.text)
        for lead in SAMPLE_LEADS:
            try:
                compose_email(step, lead, SAMPLE_MESSAGE, SAMPLE_SETTINGS)
            except RenderError as error:
                raise InvalidTemplate(f"spec.steps[{index}] ({body.name}): {error}") from error
