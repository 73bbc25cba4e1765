"""The preference page's pure parts: the masked address, the language chosen, and the markup."""

from __future__ import annotations

import uuid

import pytest

from services.intake.preference_page import choose_language, render_preferences, render_unsubscribed
from services.intake.preferences import Preferences, Subscription, mask_address


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("ann@example.com", "a***@example.com"),
        ("a@example.com", "a***@example.com"),
        ("first.last+tag@sub.example.org", "f***@sub.example.org"),
        ("no-at-sign", "***"),
    ],
)
def test_the_address_is_masked_to_its_first_letter_and_domain(address: str, masked: str) -> None:
    assert mask_address(address) == masked


@pytest.mark.parametrize(
    ("lead_locale", "accept_language", "language"),
    [
        ("de-DE", "en-US,en;q=0.9", "de"),  # the lead's own locale first
        ("de", None, "de"),
        ("fr-FR", "fr, de;q=0.7, en;q=0.5", "de"),  # no French: the browser's next language we have
        ("fr-FR", "fr", "en"),
        (None, "en-GB, de;q=0.9", "en"),
        (None, "de;q=0, en;q=0.1", "en"),  # q=0 means "not this one"
        (None, "*;q=0.5, de-CH", "de"),
        (None, "garbage;;q=x", "en"),
        (None, None, "en"),
    ],
)
def test_the_language_is_the_leads_locale_where_a_translation_exists(
    lead_locale: str | None, accept_language: str | None, language: str
) -> None:
    assert choose_language(lead_locale, accept_language) == language


def preferences(*names: str, first_name: str | None = "Ann", suppressed: bool = False) -> Preferences:
    return Preferences(
        masked_address="a***@example.com",
        first_name=first_name,
        locale=None,
        suppressed=suppressed,
        subscriptions=[Subscription(uuid.uuid5(uuid.NAMESPACE_DNS, name), name) for name in names],
    )


def test_each_subscription_is_a_labelled_ticked_checkbox() -> None:
    page = render_preferences(preferences("Weekly tips", "Course"), "en")

    for index, name in enumerate(("Weekly tips", "Course")):
        value = uuid.uuid5(uuid.NAMESPACE_DNS, name)
        assert f'<input type="checkbox" id="keep-{index}" name="keep" value="{value}" checked>' in page
        assert f'<label for="keep-{index}">{name}</label>' in page
    assert '<label for="everything">Unsubscribe from everything' in page
    assert '<button type="submit">Save preferences</button>' in page


def test_markup_in_names_is_escaped() -> None:
    page = render_preferences(preferences('<b onmouseover="x">"tips"', first_name="</p><script>x</script>"), "en")

    assert "<script>" not in page
    assert "<b " not in page
    assert "&lt;b onmouseover=&quot;x&quot;&gt;&quot;tips&quot;" in page
    assert "Hello &lt;/p&gt;&lt;script&gt;x&lt;/script&gt;," in page


def test_a_suppressed_address_gets_no_form() -> None:
    page = render_preferences(preferences("Weekly tips", suppressed=True), "de")

    assert "<form" not in page
    assert "Sie sind von allen unseren E-Mails abgemeldet." in page


def test_the_one_click_answer_says_what_was_left() -> None:
    assert "no more emails of this series" in render_unsubscribed("en", "Sequence")
    assert "diese E-Mails nicht mehr" in render_unsubscribed("de", "Global")
