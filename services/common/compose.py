"""What one lead gets from one step: the step rendered for the lead (``services.common.templates``), the
unsubscribe footer, click tracking and the open pixel (``services.common.message_links``), and the RFC
5322 message with its headers, List-Unsubscribe, List-Id and Feedback-ID included (``services.common.mime``).

:func:`compose_email` is the one pipeline: the dispatcher sends what it returns, ``sequences preview``
prints it, and applying a Sequence runs it for sample leads, so all three agree on what a template may
use and on what is refused.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass

from services.common.config import DispatcherSettings, PreviewSettings
from services.common.message_links import MessageLinks, add_open_pixel, add_unsubscribe_footer, track_clicks
from services.common.mime import build_message
from services.common.templates import RenderedEmail, TemplateLead, check_body_size, render_step, template_context


@dataclass(frozen=True)
class StepContent:
    """A step's templates, and the names a template sees as ``sequence.name`` and ``sequence.step``; the
    namespace names the list (List-Id, Feedback-ID)."""

    sequence_name: str
    step_name: str
    subject: str
    html: str | None
    text: str | None
    sequence_namespace: str = "default"


@dataclass(frozen=True)
class MessageIdentity:
    """Who sends which message: the message id (Message-ID and the signed links derive from it) and the
    Sequence's own From, when it has one."""

    message_id: uuid.UUID
    from_email: str | None = None
    from_name: str | None = None


@dataclass(frozen=True)
class ComposeSettings:
    """The installation's settings that shape a message (the dispatcher's, or a preview's)."""

    public_base_url: str
    hmac_secret: str
    from_email: str
    from_name: str
    unsubscribe_mailto: str = ""
    idempotency_header: str | None = "X-Idempotency-Key"
    track_opens: bool = True
    track_clicks: bool = True
    # List-Id's domain; empty: the From address's domain.
    list_id_domain: str = ""

    @classmethod
    def of(cls, settings: DispatcherSettings | PreviewSettings, hmac_secret: str) -> ComposeSettings:
        """From the command's settings (a preview signs its links with a key of its own)."""
        header = settings.smtp_idempotency_header
        return cls(
            public_base_url=settings.public_base_url,
            hmac_secret=hmac_secret,
            from_email=settings.from_email,
            from_name=settings.from_name,
            unsubscribe_mailto=settings.unsubscribe_mailto,
            idempotency_header=None if header.lower() == "none" else header,
            track_opens=settings.track_opens,
            track_clicks=settings.track_clicks,
            list_id_domain=settings.list_id_domain,
        )


@dataclass(frozen=True)
class ComposedEmail:
    """The message as it is sent: the envelope sender, the final parts and the RFC 5322 bytes."""

    sender: str
    email: RenderedEmail
    data: bytes


def compose_email(
    step: StepContent, lead: TemplateLead, identity: MessageIdentity, settings: ComposeSettings
) -> ComposedEmail:
    """Render ``step`` for ``lead`` and build the message; raises RenderError (a permanent failure of the
    message) when a template fails or a part is over its limit, tracking links included."""
    links = MessageLinks(settings.public_base_url, settings.hmac_secret, identity.message_id)
    context = template_context(lead, step.sequence_name, step.step_name, links.unsubscribe_url)
    rendered = render_step(step.subject, step.html, step.text, context)
    text, markup = add_unsubscribe_footer(rendered.text, rendered.html, links)
    if markup is not None and settings.track_clicks:
        markup = track_clicks(markup, links)
    if markup is not None and settings.track_opens:
        markup = add_open_pixel(markup, links)
    final = RenderedEmail(
        subject=rendered.subject,
        html=None if markup is None else check_body_size("html", markup),
        text=check_body_size("text", text),
    )
    from_email = identity.from_email or settings.from_email
    data = build_message(
        message_id=identity.message_id,
        from_email=from_email,
        from_name=(identity.from_name or settings.from_name) if identity.from_email else settings.from_name,
        to_email=lead.email,
        to_name=" ".join(filter(None, [lead.first_name, lead.last_name])) or None,
        rendered=final,
        idempotency_header=settings.idempotency_header,
        list_unsubscribe=(
            links.unsubscribe_url,
            links.unsubscribe_mailto(settings.unsubscribe_mailto or settings.from_email),
        ),
        list_id=list_id(step, settings.list_id_domain or from_email.rpartition("@")[2]),
        feedback_id=feedback_id(step),
    )
    return ComposedEmail(sender=from_email, email=final, data=data)


# Feedback-ID's last part: who sends (a constant, as mailbox providers' feedback loops expect).
FEEDBACK_SENDER_ID = "healingwork"


def _dot_atom(text: str) -> str:
    """``text`` as dot-atom text: no empty label (a Sequence name may hold ``..``), no leading/trailing dot."""
    return ".".join(label for label in text.lower().split(".") if label)


def list_id(step: StepContent, domain: str) -> str:
    """The RFC 2919 List-Id of the step's Sequence: ``<name.namespace.domain>``, one list per Sequence,
    so mailbox providers group (and a subscriber filters) each Sequence's mail on its own."""
    return _list_id(step.sequence_name, step.sequence_namespace, domain)


# The same for every message of a Sequence: spelled once per (name, namespace, domain).
@functools.lru_cache(maxsize=256)
def _list_id(sequence_name: str, sequence_namespace: str, domain: str) -> str:
    label = _dot_atom(f"{sequence_name}.{sequence_namespace}.{domain.strip('[]')}")
    return f"<{label}>"


def feedback_id(step: StepContent) -> str:
    """The Feedback-ID of a step (``step:sequence:namespace:healingwork``): complaint-loop reports from
    mailbox providers (Gmail's Feedback Loop) are aggregated by these parts, most specific first."""
    return f"{step.step_name}:{step.sequence_name}:{step.sequence_namespace}:{FEEDBACK_SENDER_ID}"
