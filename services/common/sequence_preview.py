"""What a Sequence would send one lead, and when: every step rendered exactly as the dispatcher
renders it, with its send time after delays and the send window. Pure; no database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import msgspec

from proto.sequence import SequenceResource
from services.common.durations import parse_duration
from services.common.send_window import Window, next_send_time
from services.common.sequence_templates import ConfigMapLookup, InvalidTemplate, resolve_step_bodies
from services.common.sequences import InvalidSequence
from services.dispatcher.render import RenderedEmail, RenderError, render_step


class PreviewLead(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The lead fields a preview takes (those a template can use, and the time zone for the window)."""

    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)] = "ada@example.com"
    first_name: str | None = None
    last_name: str | None = None
    source: str = "website"
    timezone: str | None = None


@dataclass(frozen=True)
class PreviewedStep:
    name: str
    send_at: datetime
    local_send_at: datetime
    email: RenderedEmail


def parse_preview_lead(text: str) -> PreviewLead:
    """Decode ``--lead`` JSON; raises InvalidSequence naming the field."""
    try:
        return msgspec.json.decode(text, type=PreviewLead)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise InvalidSequence(f"--lead: {error}") from error


def preview_sequence(
    resource: SequenceResource, lead: PreviewLead, start: datetime, config_maps: ConfigMapLookup
) -> list[PreviewedStep]:
    """Every step for ``lead`` enrolled at ``start``: each is due its delay after the previous one was
    sent (the first after enrollment), moved into the send window, as the scheduler does."""
    window = Window.of(resource.spec.send_window) if resource.spec.send_window else None
    origin = f"Sequence {resource.metadata.namespace}/{resource.metadata.name}"
    try:
        bodies = resolve_step_bodies(resource, config_maps)
    except InvalidTemplate as error:
        raise InvalidSequence(f"{origin}: {error}") from error
    context = {
        "lead": {
            "email": lead.email,
            "first_name": lead.first_name,
            "last_name": lead.last_name,
            "source": lead.source,
        },
        "sequence": {"name": resource.metadata.name, "step": ""},
    }
    zone = window.zone_for(lead.timezone) if window else None
    steps = []
    sent = start
    for index, body in enumerate(bodies):
        sent = next_send_time(sent + parse_duration(body.delay), window, lead.timezone)
        context["sequence"] = {"name": resource.metadata.name, "step": body.name}
        try:
            email = render_step(body.subject, body.html, body.text, context)
        except RenderError as error:
            raise InvalidSequence(f"{origin}: spec.steps[{index}] ({body.name}): {error}") from error
        steps.append(PreviewedStep(body.name, sent, sent.astimezone(zone) if zone else sent, email))
    return steps
