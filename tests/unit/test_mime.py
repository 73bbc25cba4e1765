"""build_message: headers from configuration or stripped of line breaks; text always, HTML as an alternative."""

from __future__ import annotations

import email
import email.policy
import uuid
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import pytest

from services.common import mime
from services.common.mime import build_message
from services.common.templates import RenderedEmail

MESSAGE_ID = uuid.UUID("0b9f5c1e-8a4d-4e0f-9c55-3a7e0d6b2f10")


def build_raw(
    *,
    to_name: str | None = "Ada Lovelace",
    subject: str = "Welcome",
    html: str | None = "<p>Hi Ada</p>",
    text: str = "Hi Ada\n",
    idempotency_header: str | None = None,
    from_name: str = "The healingwork team",
) -> bytes:
    return build_message(
        message_id=MESSAGE_ID,
        from_email="hello@mail.example.com",
        from_name=from_name,
        to_email="ada@example.org",
        to_name=to_name,
        rendered=RenderedEmail(subject=subject, html=html, text=text),
        idempotency_header=idempotency_header,
    )


def parse(raw: bytes) -> EmailMessage:
    assert b"\n" not in raw.replace(b"\r\n", b""), "every line ends with CRLF"
    parsed = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def build(**options: Any) -> EmailMessage:
    """The built bytes, parsed the way a receiving mail client would."""
    return parse(build_raw(**options))


def reparsed(message: EmailMessage) -> EmailMessage:
    return message


def header_lines(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    return head.split("\r\n")


# --- headers --------------------------------------------------------------------------------------


def test_message_id_is_derived_from_the_message_id_and_the_from_domain() -> None:
    assert build()["Message-ID"] == f"<{MESSAGE_ID}@mail.example.com>"


def test_message_id_is_the_same_when_the_message_is_built_again() -> None:
    assert build()["Message-ID"] == build(subject="other")["Message-ID"]


def test_from_carries_the_display_name() -> None:
    message = reparsed(build())

    (sender,) = message["From"].addresses
    assert sender.display_name == "The healingwork team"
    assert sender.addr_spec == "hello@mail.example.com"


def test_to_carries_the_lead_name_and_address() -> None:
    message = reparsed(build())

    (recipient,) = message["To"].addresses
    assert recipient.display_name == "Ada Lovelace"
    assert recipient.addr_spec == "ada@example.org"


def test_to_without_a_name_is_the_bare_address() -> None:
    assert str(build(to_name=None)["To"]) == "ada@example.org"


def test_subject_is_set() -> None:
    assert reparsed(build(subject="A few ideas to start with"))["Subject"] == "A few ideas to start with"


def test_non_ascii_names_and_subject_survive_serialization() -> None:
    message = reparsed(build(to_name="Zoë Ἀθηνᾶ", subject="Grüße, Zoë 😀"))

    assert message["To"].addresses[0].display_name == "Zoë Ἀθηνᾶ"
    assert message["Subject"] == "Grüße, Zoë 😀"


def test_date_header_is_present_and_timezone_aware() -> None:
    assert parsedate_to_datetime(build()["Date"]).tzinfo is not None


def test_the_date_header_is_the_clocks_time_to_the_second(monkeypatch: pytest.MonkeyPatch) -> None:
    # Formatted once per second (a cache): each message still gets its own clock's second and zone.
    times = [
        datetime(2026, 11, 30, 10, 0, 0, 100, tzinfo=UTC),
        datetime(2026, 11, 30, 10, 0, 0, 999_999, tzinfo=UTC),  # the same second
        datetime(2026, 11, 30, 10, 0, 1, tzinfo=UTC),  # the next
        datetime(2026, 11, 30, 12, 0, 1, tzinfo=timezone(timedelta(hours=2))),  # the same instant, another zone
        datetime(2026, 11, 30, 10, 0, 0, 100, tzinfo=UTC),  # back again
    ]
    headers = []
    for now in times:
        monkeypatch.setattr(mime, "utcnow", lambda now=now: now)
        headers.append(build()["Date"])

    assert headers == [format_datetime(now.replace(microsecond=0)) for now in times]
    assert headers[2] != headers[3]


def test_idempotency_header_carries_the_message_id_when_asked_for() -> None:
    assert build(idempotency_header="X-Healingwork-Message")["X-Healingwork-Message"] == str(MESSAGE_ID)


def test_no_idempotency_header_by_default() -> None:
    assert not any(line.startswith("X-") for line in header_lines(build_raw()))


# --- body parts -----------------------------------------------------------------------------------


def test_message_with_html_is_multipart_alternative_with_text_first() -> None:
    message = reparsed(build(html="<p>Hi Ada</p>", text="Hi Ada\n"))

    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content() == "Hi Ada\n"
    assert parts[1].get_content() == "<p>Hi Ada</p>\n"


def test_message_without_html_is_plain_text_only() -> None:
    message = reparsed(build(html=None, text="Just text\n"))

    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Just text\n"


def test_preferred_body_for_plain_readers_is_the_text_part() -> None:
    body = reparsed(build()).get_body(preferencelist=("plain",))

    assert body is not None
    assert body.get_content() == "Hi Ada\n"


# --- header injection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "to_name",
    ["Ada\r\nBcc: eve@example.com", "Ada\nBcc: eve@example.com", "Ada\rBcc: eve@example.com", "Ada\r\n\r\nbody"],
)
def test_to_name_with_line_breaks_cannot_inject_a_header(to_name: str) -> None:
    raw = build_raw(to_name=to_name)

    assert not any(line.lower().startswith("bcc:") for line in header_lines(raw))
    parsed = parse(raw)
    assert parsed["Bcc"] is None
    assert [a.addr_spec for a in parsed["To"].addresses] == ["ada@example.org"]


def test_to_name_that_looks_like_another_address_stays_a_display_name() -> None:
    parsed = reparsed(build(to_name='Ada, "Eve" <eve@example.com>'))

    assert [a.addr_spec for a in parsed["To"].addresses] == ["ada@example.org"]
    assert parsed["To"].addresses[0].display_name == 'Ada, "Eve" <eve@example.com>'


def test_subject_with_line_breaks_cannot_inject_a_header() -> None:
    raw = build_raw(subject="Hello\r\nBcc: eve@example.com")

    assert not any(line.lower().startswith("bcc:") for line in header_lines(raw))
    assert parse(raw)["Subject"] == "Hello Bcc: eve@example.com"


def test_from_name_with_line_breaks_is_refused() -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        build(from_name="Team\r\nBcc: eve@example.com")


# --- List-Unsubscribe (RFC 2369, RFC 8058) --------------------------------------------------------


def test_list_unsubscribe_carries_the_https_url_and_the_mailto_and_announces_one_click() -> None:
    raw = build_message(
        message_id=MESSAGE_ID,
        from_email="hello@mail.example.com",
        from_name="Team",
        to_email="ada@example.org",
        to_name=None,
        rendered=RenderedEmail(subject="Hi", html=None, text="Hi\n"),
        list_unsubscribe=(
            "https://go.example.com/u/abc.def",
            "mailto:hello@mail.example.com?subject=unsubscribe%20abc",
        ),
    )

    parsed = parse(raw)
    assert parsed["List-Unsubscribe"] == (
        "<https://go.example.com/u/abc.def>, <mailto:hello@mail.example.com?subject=unsubscribe%20abc>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_no_list_unsubscribe_headers_unless_asked_for() -> None:
    parsed = reparsed(build())

    assert parsed["List-Unsubscribe"] is None
    assert parsed["List-Unsubscribe-Post"] is None


def test_non_ascii_bodies_and_long_lines_survive_transfer_encoding() -> None:
    text = "Grüße 😀\n" + "x" * 2000 + "\n"
    message = build(html="<p>Zoë</p>", text=text)

    [plain, html_part] = list(message.iter_parts())
    assert plain.get_content() == text
    assert html_part.get_content() == "<p>Zoë</p>\n"


def test_a_long_ascii_subject_is_folded_and_unfolds_to_itself() -> None:
    subject = "A few ideas to start with, " * 6

    raw = build_raw(subject=subject)

    assert all(len(line) <= 998 for line in header_lines(raw))
    assert parse(raw)["Subject"] == " ".join(subject.split())
