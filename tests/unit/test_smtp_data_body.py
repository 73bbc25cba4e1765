"""What DATA transmits under PIPELINING (``data_body``): exactly what aiosmtplib's ``data`` would send —
CRLF line endings, dot-stuffing, the final "." — including when the fast path for an already
normalized message is taken."""

from __future__ import annotations

import itertools
import uuid

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from services.common.compose import ComposeSettings, MessageIdentity, StepContent, compose_email
from services.common.templates import TemplateLead
from services.dispatcher.smtp_pipelining import data_body


def aiosmtplib_body(data: bytes) -> bytes:
    """How aiosmtplib's ``SMTPProtocol.execute_data_command`` prepares a message."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"a",
        b"a\r\n",
        b".",
        b".\r\n",
        b"a\r\n.b\r\n",
        b"a\n.b\n",
        b"a\rb\r\n",
        b"a\r\r\nb",
        b"a\n\rb\r\n",
        b"..\r\n..\r\n",
        b"a\r\n.",
        b"x\r\n\r\n.\r\n",
    ],
)
def test_the_body_is_what_aiosmtplib_would_send(data: bytes) -> None:
    assert data_body(data) == aiosmtplib_body(data)


def test_every_short_mix_of_line_breaks_and_periods_is_sent_as_aiosmtplib_would() -> None:
    pieces = [b"\r", b"\n", b"\r\n", b".", b"a", b"\n."]
    for length in range(6):
        for combination in itertools.product(pieces, repeat=length):
            data = b"".join(combination)
            assert data_body(data) == aiosmtplib_body(data), data


def test_a_composed_message_is_sent_as_written_with_the_final_period() -> None:
    step = StepContent("welcome", "hello", "Hi", "<p>Hi {{ lead.first_name }}</p>\n.<p>dot</p>", "x\n.y\n")
    lead = TemplateLead("ada@example.org", "Ada", None, "web")
    settings = ComposeSettings("https://go.example.com", "secret", "hello@example.com", "Team")
    data = compose_email(step, lead, MessageIdentity(uuid.uuid4()), settings).data

    assert data_body(data) == aiosmtplib_body(data)
    assert b"\r\n..y\r\n" in data_body(data)
