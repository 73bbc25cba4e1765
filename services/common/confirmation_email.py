"""The double opt-in confirmation email: its built-in template and the one way to compose it.

Not a Sequence step: no tracking pixel, no rewritten links, no unsubscribe footer (the person has not
subscribed yet; ignoring the email is the way out, and it says so). It is rendered in the same bounded
sandbox as steps (``services.common.templates``: lead fields are data, HTML is autoescaped) and built by
the same ``services.common.mime``. A template sees ``lead`` (email, first_name, last_name, source) and
``confirm_url``; ``CONFIRMATION_TEMPLATE_FILE`` replaces the built-in HTML, ``CONFIRMATION_SUBJECT`` the
subject. The confirmation link is ``{PUBLIC_BASE_URL}/confirm/{token}``, the token signed for the lead
(``services.common.tokens``, purpose CONFIRM).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from services.common.config import ConfigError
from services.common.mime import build_message
from services.common.templates import RenderedEmail, RenderError, TemplateLead, render_step
from services.common.tokens import Purpose, sign_token

BUILT_IN_TEMPLATE = """\
<p>Hello{% if lead.first_name %} {{ lead.first_name }}{% endif %},</p>
<p>please confirm that you want to receive our emails at {{ lead.email }}:</p>
<p><a href="{{ confirm_url }}">Confirm my subscription</a></p>
<p>If you did not sign up, ignore this email: without your confirmation you will get nothing more from us.</p>
"""
_SAMPLE = TemplateLead("sample@example.com", "Sam", "Sample", "website")


def confirm_url(public_base_url: str, hmac_secret: str, lead_id: uuid.UUID) -> str:
    """The link that confirms ``lead_id``: ``{PUBLIC_BASE_URL}/confirm/{token}``."""
    return f"{public_base_url.rstrip('/')}/confirm/{sign_token(hmac_secret, Purpose.CONFIRM, lead_id)}"


@dataclass(frozen=True)
class ConfirmationTemplate:
    """The subject and HTML templates of the confirmation email."""

    subject: str
    html: str

    @classmethod
    def load(cls, subject: str, template_file: str) -> ConfirmationTemplate:
        """The built-in HTML, or ``template_file``'s; raises ConfigError (named after the setting) when
        the file cannot be read, does not render, or never shows ``confirm_url``."""
        html = BUILT_IN_TEMPLATE
        if template_file:
            try:
                html = Path(template_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError([f"CONFIRMATION_TEMPLATE_FILE cannot be read: {error}"]) from None
        template = cls(subject, html)
        url = "https://links.example.com/confirm/sample-token"
        try:
            rendered = template.render(_SAMPLE, url)
        except RenderError as error:
            raise ConfigError(
                [f"CONFIRMATION_TEMPLATE_FILE or CONFIRMATION_SUBJECT does not render: {error}"]
            ) from None
        if url not in (rendered.html or ""):
            raise ConfigError(["CONFIRMATION_TEMPLATE_FILE never shows {{ confirm_url }}: nobody could confirm"])
        return template

    def render(self, lead: TemplateLead, url: str) -> RenderedEmail:
        """The email for ``lead`` with its confirmation link ``url``; raises RenderError."""
        context = {
            "lead": {
                "email": lead.email,
                "first_name": lead.first_name,
                "last_name": lead.last_name,
                "source": lead.source,
            },
            "confirm_url": url,
        }
        return render_step(self.subject, self.html, None, context)


def compose_confirmation_email(
    template: ConfirmationTemplate,
    lead: TemplateLead,
    *,
    email_id: uuid.UUID,
    lead_id: uuid.UUID,
    public_base_url: str,
    hmac_secret: str,
    from_email: str,
    from_name: str,
    idempotency_header: str | None,
) -> bytes:
    """The confirmation email ``email_id`` for ``lead`` as RFC 5322 bytes; raises RenderError."""
    rendered = template.render(lead, confirm_url(public_base_url, hmac_secret, lead_id))
    return build_message(
        message_id=email_id,
        from_email=from_email,
        from_name=from_name,
        to_email=lead.email,
        to_name=" ".join(filter(None, [lead.first_name, lead.last_name])) or None,
        rendered=rendered,
        idempotency_header=idempotency_header,
    )
