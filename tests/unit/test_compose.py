"""compose_email: one step for one lead as it is sent — rendered, with the unsubscribe footer, tracking
links and the headers (List-Unsubscribe included), within the size limits."""

from __future__ import annotations

import email
import email.policy
import uuid
from dataclasses import replace
from email.message import EmailMessage

import pytest

from services.common.compose import ComposeSettings, MessageIdentity, StepContent, compose_email
from services.common.templates import MAX_BODY_CHARS, RenderError, TemplateLead

SETTINGS = ComposeSettings(
    public_base_url="https://go.example.com",
    hmac_secret="3f1b9c2e7d4a6f8b0c1e2d3a4b5c6d7e8f9a0b1c",
    from_email="hello@mail.example.com",
    from_name="The team",
)
LEAD = TemplateLead(email="ada@example.org", first_name="Ada", last_name="Lovelace", source="website")
MESSAGE = MessageIdentity(uuid.UUID("0b9f5c1e-8a4d-4e0f-9c55-3a7e0d6b2f10"))


def step(html: str | None = "<p>Hi {{ lead.first_name }}</p>", text: str | None = None) -> StepContent:
    return StepContent("welcome", "hello", "Welcome, {{ lead.first_name }}", html, text)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_the_message_carries_footer_tracking_and_one_click_unsubscribe() -> None:
    composed = compose_email(
        step('<p>Hi {{ lead.first_name }}, <a href="https://example.com/a">read</a></p>'), LEAD, MESSAGE, SETTINGS
    )

    message = parse(composed.data)
    assert composed.sender == "hello@mail.example.com"
    assert message["Subject"] == "Welcome, Ada"
    assert message["To"] == "Ada Lovelace <ada@example.org>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe_url = message["List-Unsubscribe"].split(",")[0].strip().strip("<>")
    assert unsubscribe_url.startswith("https://go.example.com/u/")
    assert composed.email.html is not None
    assert "https://go.example.com/t/c/" in composed.email.html
    assert "https://go.example.com/t/o/" in composed.email.html
    assert f"Unsubscribe: {unsubscribe_url}" in composed.email.text


def test_a_template_placing_the_unsubscribe_url_itself_gets_no_second_footer() -> None:
    composed = compose_email(step(None, "Bye: {{ unsubscribe_url }}"), LEAD, MESSAGE, SETTINGS)

    assert composed.email.text.count("/u/") == 1
    assert "Unsubscribe:" not in composed.email.text


def test_the_sequence_sender_overrides_the_configured_one() -> None:
    identity = MessageIdentity(MESSAGE.message_id, "events@mail.example.com", "Events")

    composed = compose_email(step(), LEAD, identity, SETTINGS)

    assert composed.sender == "events@mail.example.com"
    assert parse(composed.data)["From"] == "Events <events@mail.example.com>"


def test_tracking_that_would_push_the_html_over_the_limit_is_a_render_error() -> None:
    links = '{% for i in range(10000) %}<a href="https://x.example/{{ i }}">x</a>{% endfor %}'  # 400 kB
    untracked = replace(SETTINGS, track_clicks=False)

    assert compose_email(step(links), LEAD, MESSAGE, untracked).email.html is not None
    with pytest.raises(RenderError, match=f"the html is .* over the limit of {MAX_BODY_CHARS:,}"):
        compose_email(step(links), LEAD, MESSAGE, SETTINGS)


def test_each_sequence_is_its_own_list_named_after_the_from_domain_by_default() -> None:
    content = StepContent("welcome", "hello", "Hi", None, "Hi", "marketing")

    message = parse(compose_email(content, LEAD, MESSAGE, SETTINGS).data)

    assert message["List-Id"] == "<welcome.marketing.mail.example.com>"
    assert message["Feedback-ID"] == "hello:welcome:marketing:healingwork"


def test_the_list_id_follows_the_sequences_own_sender_and_the_list_id_domain_setting() -> None:
    content = StepContent("welcome", "hello", "Hi", None, "Hi")
    own_sender = MessageIdentity(MESSAGE.message_id, "news@Brand.Example", "Brand")

    by_sender = parse(compose_email(content, LEAD, own_sender, SETTINGS).data)
    by_setting = parse(
        compose_email(content, LEAD, own_sender, replace(SETTINGS, list_id_domain="lists.example.net")).data
    )

    assert by_sender["List-Id"] == "<welcome.default.brand.example>"
    assert by_setting["List-Id"] == "<welcome.default.lists.example.net>"


def test_a_sequence_name_with_consecutive_dots_still_makes_a_valid_list_id() -> None:
    content = StepContent("a..b.", "hello", "Hi", None, "Hi")

    message = parse(compose_email(content, LEAD, MESSAGE, SETTINGS).data)

    assert message["List-Id"] == "<a.b.default.mail.example.com>"
