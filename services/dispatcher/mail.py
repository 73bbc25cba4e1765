"""Building RFC 5322 messages. Header values come from configuration or are stripped of line breaks;
the ``email`` package's default policy refuses any header containing CR or LF as a last guard."""

from __future__ import annotations

import uuid
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from services.common.clock import utcnow
from services.dispatcher.render import RenderedEmail


def build_message(
    *,
    message_id: uuid.UUID,
    from_email: str,
    from_name: str,
    to_email: str,
    to_name: str | None,
    rendered: RenderedEmail,
    idempotency_header: str | None = None,
    list_unsubscribe: tuple[str, str] | None = None,
) -> EmailMessage:
    """A multipart/alternative message (text/plain always, text/html when the step has HTML), with a
    Message-ID derived from the message id, so a resend after a crash carries the same Message-ID.

    ``list_unsubscribe`` is (https URL, mailto URI): both go into List-Unsubscribe, and
    List-Unsubscribe-Post announces RFC 8058 one-click unsubscription to the https URL.
    """
    domain = from_email.rpartition("@")[2]
    message = EmailMessage()
    message["Message-ID"] = f"<{message_id}@{domain}>"
    message["Date"] = format_datetime(utcnow())
    message["From"] = Address(display_name=from_name, addr_spec=from_email)
    message["To"] = Address(display_name=_one_line(to_name or ""), addr_spec=to_email)
    message["Subject"] = _one_line(rendered.subject)
    if idempotency_header:
        message[idempotency_header] = str(message_id)
    if list_unsubscribe is not None:
        https_url, mailto = list_unsubscribe
        message["List-Unsubscribe"] = f"<{_one_line(https_url)}>, <{_one_line(mailto)}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(rendered.text)
    if rendered.html is not None:
        message.add_alternative(rendered.html, subtype="html")
    return message


def _one_line(value: str) -> str:
    return " ".join(value.split())
