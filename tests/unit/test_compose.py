"""compose_email: one step for one lead as it is sent — rendered, with the unsubscribe footer, tracking
links and the headers (List-Unsubscribe included), within the size limits."""

from __future__ import annotations

import email
import email.policy
import re
import uuid
from dataclasses import replace
from email.message import EmailMessage

import pytest

from services.common.compose import ComposeSettings, MessageIdentity, StepContent, compose_email
from services.common.templates import MAX_BODY_CHARS, RenderError, TemplateLead
from services.common.tokens import Purpose, verify_token

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


# --- nothing cached serves one lead's or one revision's content to another --------------------------


def signed_ids(markup: str, prefix: str, purpose: Purpose) -> list[uuid.UUID]:
    """The message ids the signed links under ``prefix`` (``t/c``, ``t/o``, ``u``) verify to."""
    tokens = re.findall(rf"https://go\.example\.com/{prefix}/([A-Za-z0-9_\-.]+)", markup)
    return [verify_token(token, purpose, [SETTINGS.hmac_secret]).message_id for token in tokens]


def test_two_leads_of_the_same_step_each_get_their_own_name_links_and_unsubscribe_token() -> None:
    same_step = step('<p>Hi {{ lead.first_name }}, <a href="https://example.com/a">read</a></p>')
    grace = TemplateLead(email="grace@example.net", first_name="Grace", last_name="Hopper", source="website")
    other = MessageIdentity(uuid.UUID("7c2e4a10-3b5d-4f6e-8a90-1b2c3d4e5f60"))

    first = compose_email(same_step, LEAD, MESSAGE, SETTINGS)
    second = compose_email(same_step, grace, other, SETTINGS)
    again = compose_email(same_step, LEAD, MESSAGE, SETTINGS)

    for composed, lead, identity in ((first, LEAD, MESSAGE), (second, grace, other), (again, LEAD, MESSAGE)):
        message = parse(composed.data)
        markup = composed.email.html or ""
        assert message["Subject"] == f"Welcome, {lead.first_name}"
        assert message["To"] == f"{lead.first_name} {lead.last_name} <{lead.email}>"
        assert f"Hi {lead.first_name}," in markup
        assert message["Message-ID"].startswith(f"<{identity.message_id}@")
        for prefix, purpose in (("t/c", Purpose.CLICK), ("t/o", Purpose.OPEN), ("u", Purpose.UNSUBSCRIBE)):
            assert signed_ids(markup, prefix, purpose) == [identity.message_id]
        assert signed_ids(message["List-Unsubscribe"], "u", Purpose.UNSUBSCRIBE) == [identity.message_id]
        assert signed_ids(composed.email.text, "u", Purpose.UNSUBSCRIBE) == [identity.message_id]
    assert "Grace" not in first.data.decode() + again.data.decode()
    assert "Ada" not in second.data.decode()


def test_an_edited_step_is_rendered_from_its_new_template() -> None:
    before = compose_email(step("<p>Hi {{ lead.first_name }}</p>"), LEAD, MESSAGE, SETTINGS)
    edited = StepContent(
        "welcome", "hello", "Still here, {{ lead.first_name }}?", "<p>Bye {{ lead.last_name }}</p>", None
    )

    after = compose_email(edited, LEAD, MESSAGE, SETTINGS)

    assert parse(before.data)["Subject"] == "Welcome, Ada"
    assert parse(after.data)["Subject"] == "Still here, Ada?"
    assert "Bye Lovelace" in (after.email.html or "")
    assert "Hi Ada" not in (after.email.html or "") + after.email.text
