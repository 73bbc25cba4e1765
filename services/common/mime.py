"""Building RFC 5322 messages, straight to bytes.

Measured here, ``email.message.EmailMessage`` costs about 1.3 ms per message to build and serialize,
more than the whole SMTP transaction; at the dispatcher's target rate that alone would need more
than a core. So messages are written out directly: a fixed set of headers, text/plain always
(text/html as an alternative when the step has HTML), 7bit when a part is plain ASCII with short
lines and base64 otherwise, non-ASCII header text as RFC 2047 encoded words (via the ``email``
package's own encoders).

No CR or LF from lead data reaches a header: names and the subject are collapsed to one line, and
every header value is checked once more as it is written, so a line break anywhere is an error
rather than a new header.
"""

from __future__ import annotations

import base64
import functools
import secrets
import uuid
from datetime import datetime, timedelta
from email.header import Header
from email.utils import format_datetime, formataddr

from services.common.clock import utcnow
from services.common.templates import RenderedEmail

_MAX_7BIT_LINE = 998


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
    list_id: str | None = None,
    feedback_id: str | None = None,
) -> bytes:
    """The message as bytes with CRLF line ends, ready for SMTP DATA.

    Its Message-ID derives from the message id, so a resend after a crash carries the same one.
    ``list_unsubscribe`` is (https URL, mailto URI): both go into List-Unsubscribe, and
    List-Unsubscribe-Post announces RFC 8058 one-click unsubscription to the https URL. ``list_id``
    (RFC 2919, ``<label.domain>``) names the list the message belongs to, ``feedback_id`` the parts
    complaint reports are grouped by; a list header without List-Id is what spam filters call
    incomplete (SpamAssassin's ``__LIST_PARTIAL``).
    """
    domain = from_email.rpartition("@")[2]
    message_id_text = str(message_id)
    headers = [
        ("Message-ID", f"<{message_id_text}@{domain}>"),
        ("Date", _date_header(utcnow())),
        ("From", _sender_address(from_name, from_email)),
        ("To", _address(_one_line(to_name or ""), to_email)),
        ("Subject", _encoded(_one_line(rendered.subject), "Subject")),
        ("MIME-Version", "1.0"),
    ]
    if idempotency_header:
        headers.append((idempotency_header, message_id_text))
    if list_unsubscribe is not None:
        https_url, mailto = list_unsubscribe
        headers.append(("List-Unsubscribe", f"<{https_url}>,\r\n <{mailto}>"))
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    if list_id is not None:
        headers.append(("List-Id", list_id))
    if feedback_id is not None:
        headers.append(("Feedback-ID", feedback_id))
    text_part = _part("text/plain", rendered.text)
    if rendered.html is None:
        body = text_part
    else:
        boundary = f"=_hw_{secrets.token_hex(12)}"
        html_part = _part("text/html", rendered.html)
        headers.append(("Content-Type", f'multipart/alternative; boundary="{boundary}"'))
        body = (
            f"--{boundary}\r\n".encode()
            + text_part
            + f"\r\n--{boundary}\r\n".encode()
            + html_part
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return _head(headers) + b"\r\n" + body
    content_headers, _, content = text_part.partition(b"\r\n\r\n")
    return _head(headers) + content_headers + b"\r\n\r\n" + content


def _head(headers: list[tuple[str, str]]) -> bytes:
    lines = []
    for name, value in headers:
        # A folded value (CRLF followed by a space) is ours; any other line break is refused.
        if ("\r" in value or "\n" in value) and (
            "\r" in value.replace("\r\n ", "") or "\n" in value.replace("\r\n ", "")
        ):
            raise ValueError(f"header {name} must not contain CR or LF")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode()


def _part(content_type: str, content: str) -> bytes:
    text = content.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    lines = text.split("\n")
    if text.isascii() and max(map(len, lines)) <= _MAX_7BIT_LINE:
        encoding, payload = "7bit", "\r\n".join(lines).encode()
    else:
        encoding = "base64"
        payload = base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
    return (
        f"Content-Type: {content_type}; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n".encode()
        + payload
    )


def _date_header(now: datetime) -> str:
    """``format_datetime(now)``, formatted once per second rather than once per message: it has a
    resolution of one second. The offset is part of the key (equal instants in two zones are equal
    datetimes, but their Date headers differ)."""
    return _formatted_date(now.replace(microsecond=0), now.utcoffset())


@functools.lru_cache(maxsize=4)
def _formatted_date(second: datetime, offset: timedelta | None) -> str:
    return format_datetime(second)


def _address(name: str, address: str) -> str:
    if any(c in name for c in "\r\n"):
        raise ValueError("a display name must not contain CR or LF")
    if not name:
        return address
    return formataddr((name, address), charset="utf-8")


# From: the installation's or a Sequence's sender, the same for many messages.
_sender_address = functools.lru_cache(maxsize=64)(_address)


def _encoded(value: str, header_name: str) -> str:
    if value.isascii() and len(value) + len(header_name) + 2 <= 78:
        return value
    charset = "us-ascii" if value.isascii() else "utf-8"
    return Header(value, charset, header_name=header_name).encode(linesep="\r\n")


def _one_line(value: str) -> str:
    return " ".join(value.split())
