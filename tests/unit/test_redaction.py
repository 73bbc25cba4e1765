"""Write-time redaction of addresses in SMTP and provider texts, and what is stored of a clicked URL."""

from __future__ import annotations

import pytest

from services.common.redaction import click_target_for_storage, known_values_of, redact_addresses
from services.intake.timeline import EVENT_KINDS, InvalidCursor, decode_cursor, entry_kind


def test_an_smtp_refusal_quoting_the_recipient_keeps_its_code_and_loses_the_address() -> None:
    assert redact_addresses("550 5.1.1 <jane@example.com>: Recipient address rejected") == (
        "550 5.1.1 <redacted>: Recipient address rejected"
    )


def test_every_address_in_a_text_is_redacted_whatever_its_case() -> None:
    text = "bounce for Jane.Doe+x@Mail.Example.COM via relay postmaster@relay.example.net"
    assert redact_addresses(text) == "bounce for redacted via relay redacted"


def test_the_known_local_part_and_names_are_redacted_even_without_an_at_sign() -> None:
    known = known_values_of("jane.doe@example.com", "Jane", "Doe-Smith")
    assert redact_addresses("550 jane.doe... User unknown (JANE doe-smith)", known) == (
        "550 redacted... User unknown (redacted redacted)"
    )


def test_short_known_values_do_not_shred_unrelated_words() -> None:
    assert redact_addresses("250 ok queued", ["ok", "Al"]) == "250 ok queued"


def test_a_clicked_url_is_stored_without_query_fragment_or_user_info() -> None:
    url = "https://user:pw@shop.example.com:8443/offer/jane?email=jane%40example.com&utm_source=mail#top"
    assert click_target_for_storage(url, ["jane"]) == "https://shop.example.com:8443/offer/redacted"


def test_an_unmapped_event_type_still_appears_generically() -> None:
    assert entry_kind("event:custom.signed_up") == "event.custom.signed_up"
    assert entry_kind("event:sent") == EVENT_KINDS["sent"] == "step.sent"
    assert entry_kind("enrollment.started") == "enrollment.started"


# Empty, not base64, base64 of text, and a cursor-shaped array with a time without zone.
@pytest.mark.parametrize("text", ["", "!!!", "bm90LWEtY3Vyc29y", "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwxLCJ4Il0"])
def test_a_cursor_not_issued_by_the_timeline_is_refused(text: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(text)


@pytest.mark.parametrize(
    ("text", "known", "expected"),
    [
        ("250 2.0.0 Ok: queued as 4Xy", ["jane.doe@example.com", "jane.doe", "Jane"], "250 2.0.0 Ok: queued as 4Xy"),
        ("550 JANE.DOE... User unknown", ["jane.doe@example.com", "jane.doe"], "550 redacted... User unknown"),
        # Non-ASCII text or value: decided by the regular expression (IGNORECASE folds more than lower()).
        ("550 ZOË unknown", ["Zoë"], "550 redacted unknown"),
        ("550 \u212aATE unknown", ["kate"], "550 redacted unknown"),  # KELVIN SIGN matches k
    ],
)
def test_known_values_are_removed_case_insensitively_whether_or_not_a_pattern_is_compiled(
    text: str, known: list[str], expected: str
) -> None:
    assert redact_addresses(text, known) == expected
