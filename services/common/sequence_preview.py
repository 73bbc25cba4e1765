"""What a Sequence would send one lead, and when: every step composed exactly as the dispatcher composes
it (``services.common.compose``: footer, tracking links, List-Unsubscribe and the other headers), read
back from the message's own bytes, with its send time after delays and the send window, in UTC and in
the lead's time zone. Pure; no database.
"""

from __future__ import annotations

import email
import email.policy
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import msgspec

from proto.sequence import SequenceResource
from services.common.compose import ComposeSettings, MessageIdentity, StepContent, compose_email
from services.common.conditions import ConditionError, ConditionFacts, EventFact, LeadFact, email_domain, evaluate
from services.common.config import PreviewSettings
from services.common.durations import parse_duration
from services.common.send_window import Window, next_send_time, zone
from services.common.sequence_templates import ConfigMapLookup, InvalidTemplate, resolve_step_bodies
from services.common.sequences import InvalidSequence, resolve_variant_bodies, sequence_id
from services.common.step_rules import Action, RevisionRules, choose_variant, decide_step, rules_of_spec
from services.common.templates import RenderError, TemplateLead

# Links in a preview are signed with this key, not HMAC_SECRET: they show the shape of the real links,
# and no preview can be used to unsubscribe or to forge a click.
PREVIEW_HMAC_SECRET = "preview-only-links-signed-with-this-key-do-not-verify"  # noqa: S105 - not a secret
_PREVIEW_NAMESPACE = uuid.UUID("8d2f5a4e-1c3b-4f6a-9e7d-2b1c0a9f8e7d")
# Headers that say how the message is encoded, or when it was built, rather than what the lead sees.
_MIME_PLUMBING = frozenset({"date", "mime-version", "content-type", "content-transfer-encoding"})


class PreviewLead(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The lead fields a preview takes (those a template can use, and the time zone for the window)."""

    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)] = "ada@example.com"
    first_name: str | None = None
    last_name: str | None = None
    source: str = "website"
    timezone: str | None = None
    # For conditions (trigger.when and the rest) and the A/B variant: a lead's variant follows its id,
    # so give the real id to see the variant that lead gets.
    id: uuid.UUID | None = None
    locale: str | None = None
    tags: list[str] = []
    utm: dict[str, str] = {}
    metadata: dict[str, Any] = {}


class PreviewEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An event the lead is taken to have (``--events``), at ``at`` (default: the enrollment time)."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    step: str = ""
    sequence: str = ""
    variant: str = ""
    automated: bool = False
    at: datetime | None = None
    properties: dict[str, Any] = {}


@dataclass(frozen=True)
class PreviewedStep:
    """One step as the lead gets it: when (UTC and ``local_send_at`` in ``zone_label``'s zone), the
    headers that matter and the decoded parts, all read from the message the dispatcher would send."""

    name: str
    send_at: datetime
    local_send_at: datetime
    zone_label: str
    headers: list[tuple[str, str]]
    text: str
    html: str | None
    # What the scheduler would do at the step's due time given --events: "send", "skip: <why>",
    # "wait <timeout>, then send|skip", "fail: <error>", "exit: goal" (no later step follows an exit).
    outcome: str = "send"
    variant: str | None = None


def parse_preview_lead(text: str) -> PreviewLead:
    """Decode ``--lead`` JSON; raises InvalidSequence naming the field (an unknown time zone included)."""
    try:
        lead = msgspec.json.decode(text, type=PreviewLead)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise InvalidSequence(f"--lead: {error}") from error
    if lead.timezone is not None and zone(lead.timezone) is None:
        raise InvalidSequence(f"--lead: timezone {lead.timezone!r} is not an IANA time zone such as 'Europe/Berlin'")
    return lead


def parse_preview_events(text: str | None) -> list[PreviewEvent]:
    """Decode ``--events`` JSON (a list of events); raises InvalidSequence naming the problem."""
    if not text:
        return []
    try:
        return msgspec.json.decode(text, type=list[PreviewEvent])
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise InvalidSequence(f"--events: {error}") from error


def lead_zone(lead: PreviewLead, window: Window | None) -> tuple[ZoneInfo, str]:
    """The zone to show a lead's send times in, and how to name it: the lead's own; without one, the
    zone the send window is read in for this lead; with neither, UTC."""
    own = zone(lead.timezone) if lead.timezone else None
    if own is not None:
        return own, f"{own.key}, the lead's time zone"
    if window is not None:
        read_in = window.zone_for(None)
        return read_in, f"{read_in.key}, the send window's zone; the lead has none"
    return ZoneInfo("UTC"), "UTC; the lead has no time zone"


def preview_sequence(
    resource: SequenceResource,
    lead: PreviewLead,
    start: datetime,
    config_maps: ConfigMapLookup,
    settings: PreviewSettings | None = None,
    events: list[PreviewEvent] | None = None,
) -> list[PreviewedStep]:
    """Every step for ``lead`` enrolled at ``start``: each is due its delay after the previous one was
    sent (the first after enrollment), moved into the send window, as the scheduler does; composed as
    the dispatcher does with ``settings`` (defaults when None). With the lead's ``events``, each step's
    conditions decide as the scheduler's would (:func:`services.common.step_rules.decide_step`): sent,
    skipped, waited for (the given events are all there is, so a wait runs to its timeout), or the
    enrollment exits; each sent step counts as a ``sent`` event for the next ones. A lead
    ``trigger.when`` keeps out gets no steps."""
    window = Window.of(resource.spec.send_window) if resource.spec.send_window else None
    meta = resource.metadata
    origin = f"Sequence {meta.namespace}/{meta.name}"
    try:
        bodies = resolve_step_bodies(resource, config_maps)
        variant_bodies = {
            (position, body.name): body
            for position, _, _, body in resolve_variant_bodies(resource, bodies, config_maps)
        }
    except InvalidTemplate as error:
        raise InvalidSequence(f"{origin}: {error}") from error
    rules = rules_of_spec(resource.spec)
    lead_id = lead.id or uuid.uuid5(_PREVIEW_NAMESPACE, lead.email)
    seq_id = sequence_id(meta.namespace, meta.name)
    fact_lead = LeadFact(
        domain=email_domain(lead.email),
        source=lead.source,
        accepted_at=start,
        first_name=lead.first_name,
        last_name=lead.last_name,
        tags=lead.tags,
        utm=lead.utm,
        locale=lead.locale,
        timezone=lead.timezone,
        metadata=lead.metadata,
    )
    history = [
        EventFact(e.type, e.at or start, e.step, e.sequence, e.variant, e.automated, e.properties) for e in events or []
    ]

    def facts_at(moment: datetime) -> ConditionFacts:
        return ConditionFacts(fact_lead, sorted(history, key=lambda e: e.at, reverse=True), moment)

    if rules.trigger_when is not None:
        try:
            if not evaluate(rules.trigger_when, facts_at(start)):
                return []
        except ConditionError as error:
            raise InvalidSequence(f"{origin}: trigger.when: {error}") from error
    compose_settings = ComposeSettings.of(settings or PreviewSettings(), PREVIEW_HMAC_SECRET)
    sender = resource.spec.from_
    template_lead = TemplateLead(lead.email, lead.first_name, lead.last_name, lead.source)
    local_zone, zone_label = lead_zone(lead, window)
    steps = []
    sent = start
    for index, body in enumerate(bodies):
        sent = next_send_time(sent + parse_duration(body.delay), window, lead.timezone)
        outcome, sends = _outcome(rules, index, facts_at, sent)
        if sends[1] is not None:
            sent = next_send_time(sends[1], window, lead.timezone)
        variant = choose_variant(lead_id, seq_id, rules.steps[index]) if sends[0] else None
        if variant is not None:
            body = variant_bodies[(index, variant)]
        if not sends[0]:
            steps.append(PreviewedStep(body.name, sent, sent.astimezone(local_zone), zone_label, [], "", None, outcome))
            if outcome.startswith("exit"):
                break
            continue
        history.append(EventFact("sent", sent, step=rules.steps[index].name, sequence=meta.name, variant=variant or ""))
        identity = MessageIdentity(
            uuid.uuid5(_PREVIEW_NAMESPACE, f"{meta.namespace}/{meta.name}/{body.name}/{lead.email}"),
            sender.email if sender else None,
            sender.name if sender else None,
        )
        try:
            composed = compose_email(
                StepContent(meta.name, rules.steps[index].name, body.subject, body.html, body.text, meta.namespace),
                template_lead,
                identity,
                compose_settings,
            )
        except RenderError as error:
            raise InvalidSequence(f"{origin}: spec.steps[{index}] ({body.name}): {error}") from error
        message: EmailMessage = email.message_from_bytes(composed.data, policy=email.policy.default)
        headers = [(name, str(value)) for name, value in message.items() if name.lower() not in _MIME_PLUMBING]
        text_part, html_part = message.get_body(("plain",)), message.get_body(("html",))
        steps.append(
            PreviewedStep(
                name=rules.steps[index].name,
                send_at=sent,
                local_send_at=sent.astimezone(local_zone),
                zone_label=zone_label,
                headers=headers,
                text=text_part.get_content() if text_part is not None else "",
                html=html_part.get_content() if html_part is not None else None,
                outcome=outcome,
                variant=variant,
            )
        )
    return steps


def _outcome(
    rules: RevisionRules, position: int, facts_at: Callable[[datetime], ConditionFacts], due: datetime
) -> tuple[str, tuple[bool, datetime | None]]:
    """What the scheduler would do with the step due at ``due``: a label, whether it sends, and the
    time it is done at when a wait moved it (None: at ``due``)."""
    decision = decide_step(rules, position, facts_at(due), now=due, woken_early=False, wait_deadline=None)
    if decision.action is Action.WAIT:
        deadline = decision.wait_deadline
        assert deadline is not None
        timed_out = decide_step(
            rules, position, facts_at(deadline), now=deadline, woken_early=False, wait_deadline=deadline
        )
        then = "send" if timed_out.action is Action.SEND else timed_out.action.value
        return f"wait until {deadline.isoformat()}, then {then}", (timed_out.action is Action.SEND, deadline)
    labels = {
        Action.SEND: "send" + (f" ({decision.reason})" if decision.reason else ""),
        Action.SKIP: f"skip: {decision.reason}",
        Action.EXIT: "exit: goal",
        Action.FAIL: f"fail: {decision.reason}",
        Action.RESTORE: "send",
    }
    return labels[decision.action], (decision.action in (Action.SEND, Action.RESTORE), None)
