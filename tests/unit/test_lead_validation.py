"""parse_lead and clean_text: every invalid field reported together, everything a lead typed sanitized."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from proto.http import Consent, LeadSubmission, Utm
from services.intake.validation import InvalidLead, clean_text, parse_lead


def body(**overrides: Any) -> dict[str, Any]:
    lead: dict[str, Any] = {"email": "ada@example.com", "source": "website", "consent": {"marketing": True}}
    lead.update(overrides)
    return lead


def errors_of(raw: object) -> dict[str, str]:
    with pytest.raises(InvalidLead) as raised:
        parse_lead(raw)
    return {error.field: error.reason for error in raised.value.errors}


# --- valid leads ----------------------------------------------------------------------------------


def test_minimal_valid_lead_is_accepted_with_defaults() -> None:
    lead, key = parse_lead(body())

    assert lead == LeadSubmission(
        email="ada@example.com",
        source="website",
        consent=Consent(marketing=True),
        first_name=None,
        last_name=None,
        tags=[],
    )
    assert (lead.phone, lead.utm, lead.locale, lead.timezone, lead.metadata) == (None, Utm(), None, None, {})
    assert key == "ada@example.com"


def test_full_valid_lead_keeps_every_field() -> None:
    lead, _ = parse_lead(
        body(
            first_name="Ada",
            last_name="Lovelace",
            tags=["newsletter", "webinar-2024"],
            consent={"marketing": False, "text": "I agree to receive email.", "captured_at": "2024-05-01T09:30:00Z"},
        )
    )

    assert lead.first_name == "Ada"
    assert lead.last_name == "Lovelace"
    assert lead.tags == ["newsletter", "webinar-2024"]
    assert lead.consent == Consent(
        marketing=False, text="I agree to receive email.", captured_at=datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    )


@pytest.mark.parametrize("source", ["website", "a", "web.form_2", "landing-page", "x" * 64])
def test_slug_sources_are_accepted(source: str) -> None:
    assert parse_lead(body(source=source))[0].source == source


# --- every problem at once ------------------------------------------------------------------------


def test_every_invalid_field_is_reported_together() -> None:
    errors = errors_of(
        {
            "email": "not-an-email",
            "source": "Web Site",
            "consent": {"marketing": "yes"},
            "tags": ["ok", ""],
            "phone": "555-0100",
            "utm": {"campaign": 7},
            "locale": "english",
            "timezone": "Mars/Olympus",
            "metadata": {"plan": ["pro"]},
            "colour": "blue",
        }
    )

    assert set(errors) == {
        "/email",
        "/source",
        "/consent/marketing",
        "/tags/1",
        "/phone",
        "/utm/campaign",
        "/locale",
        "/timezone",
        "/metadata/plan",
        "/colour",
    }
    assert errors["/colour"] == "unknown field"


def test_empty_object_reports_every_required_field() -> None:
    assert set(errors_of({})) == {"/email", "/source", "/consent"}


def test_invalid_lead_message_names_each_field() -> None:
    with pytest.raises(InvalidLead) as raised:
        parse_lead(body(email="nope", source=""))

    assert "/email: " in str(raised.value)
    assert "/source: " in str(raised.value)


@pytest.mark.parametrize("raw", [[], "lead", 42, None, [{"email": "ada@example.com"}]])
def test_a_body_that_is_not_an_object_is_rejected(raw: object) -> None:
    assert errors_of(raw) == {"/": "the body must be a JSON object"}


# --- email ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("email", [None, 42, "", "   ", ["ada@example.com"]])
def test_email_is_required_as_a_non_blank_string(email: object) -> None:
    assert errors_of(body(email=email)) == {"/email": "required, a string"}


@pytest.mark.parametrize(
    "email", ["ada", "ada@", "@example.com", "ada@@example.com", "Ada <ada@example.com>", "ada@exa mple.com"]
)
def test_malformed_email_is_rejected(email: str) -> None:
    assert set(errors_of(body(email=email))) == {"/email"}


def test_email_with_an_embedded_line_break_is_rejected() -> None:
    assert set(errors_of(body(email="ada@example.com\r\nBcc: eve@example.com"))) == {"/email"}


def test_email_surrounding_whitespace_is_trimmed() -> None:
    lead, key = parse_lead(body(email="  ada@example.com \n"))

    assert lead.email == "ada@example.com"
    assert key == "ada@example.com"


def test_email_domain_is_lower_cased_and_idna_encoded_while_the_local_part_is_kept() -> None:
    lead, key = parse_lead(body(email="Ada@BÜCHER.example"))

    assert lead.email == "Ada@xn--bcher-kva.example"
    assert key == "ada@xn--bcher-kva.example"


def test_email_key_compares_whole_addresses_case_insensitively() -> None:
    _, first = parse_lead(body(email="Ada.Lovelace@Example.COM"))
    _, second = parse_lead(body(email="ada.lovelace@example.com"))

    assert first == second == "ada.lovelace@example.com"


# --- source ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [None, "", "Website", "web site", "-web", "web-", "x" * 65, "wéb", 7])
def test_source_must_be_a_slug(source: object) -> None:
    assert set(errors_of(body(source=source))) == {"/source"}


# --- names ----------------------------------------------------------------------------------------


def test_names_have_control_and_zero_width_characters_removed() -> None:
    lead, _ = parse_lead(body(first_name="A\u200bd\u200ca\u200d\u2060\ufeff\x00\x07", last_name="Love\x1blace\x7f"))

    assert lead.first_name == "Ada"
    assert lead.last_name == "Lovelace"


def test_names_have_line_breaks_replaced_and_whitespace_collapsed() -> None:
    lead, _ = parse_lead(body(first_name="  Ada\r\nBcc: eve@example.com\t\t x  "))

    assert lead.first_name == "Ada Bcc: eve@example.com x"
    assert "\r" not in lead.first_name
    assert "\n" not in lead.first_name


def test_name_that_is_only_whitespace_is_stored_as_absent() -> None:
    lead, _ = parse_lead(body(first_name=" \t\u200b ", last_name=""))

    assert lead.first_name is None
    assert lead.last_name is None


def test_name_of_100_characters_is_accepted() -> None:
    assert parse_lead(body(first_name="x" * 100))[0].first_name == "x" * 100


def test_name_over_100_characters_is_rejected() -> None:
    assert errors_of(body(first_name="x" * 101, last_name="y" * 500)) == {
        "/first_name": "at most 100 characters",
        "/last_name": "at most 100 characters",
    }


def test_name_length_is_measured_after_cleaning() -> None:
    lead, _ = parse_lead(body(first_name="x" * 100 + "\u200b" * 50 + "   "))

    assert lead.first_name == "x" * 100


@pytest.mark.parametrize("name", [42, ["Ada"], {"first": "Ada"}, True])
def test_name_that_is_not_a_string_is_rejected(name: object) -> None:
    assert errors_of(body(first_name=name)) == {"/first_name": "must be a string"}


def test_explicit_null_name_is_stored_as_absent() -> None:
    assert parse_lead(body(first_name=None))[0].first_name is None


# --- tags -----------------------------------------------------------------------------------------


def test_tags_are_lower_cased_cleaned_and_deduplicated_in_order() -> None:
    lead, _ = parse_lead(body(tags=["VIP", "newsletter", "vip", " News\u200bletter ", "Spring  Sale"]))

    assert lead.tags == ["vip", "newsletter", "spring sale"]


@pytest.mark.parametrize("tags", ["vip", {"vip": True}, ["t"] * 21, None])
def test_tags_must_be_a_list_of_at_most_20(tags: object) -> None:
    assert set(errors_of(body(tags=tags))) == {"/tags"}


def test_twenty_tags_are_accepted() -> None:
    assert len(parse_lead(body(tags=[f"t{i}" for i in range(20)]))[0].tags) == 20


def test_each_invalid_tag_is_reported_by_its_index() -> None:
    errors = errors_of(body(tags=["ok", "", 3, "x" * 65, " \u200b ", "fine"]))

    assert set(errors) == {"/tags/1", "/tags/2", "/tags/3", "/tags/4"}


# --- consent --------------------------------------------------------------------------------------


@pytest.mark.parametrize("consent", [None, True, "yes", []])
def test_consent_must_be_an_object(consent: object) -> None:
    assert set(errors_of(body(consent=consent))) == {"/consent"}


@pytest.mark.parametrize("marketing", [None, "true", 1, 0])
def test_consent_marketing_must_be_a_boolean(marketing: object) -> None:
    assert errors_of(body(consent={"marketing": marketing})) == {"/consent/marketing": "required, true or false"}


def test_consent_unknown_field_is_rejected() -> None:
    assert errors_of(body(consent={"marketing": True, "sms": True})) == {"/consent/sms": "unknown field"}


def test_consent_text_over_2000_characters_is_rejected() -> None:
    assert set(errors_of(body(consent={"marketing": True, "text": "x" * 2001}))) == {"/consent/text"}


def test_consent_text_is_cleaned() -> None:
    lead, _ = parse_lead(body(consent={"marketing": True, "text": "  I\u202e agree\r\n to email\x00 "}))

    assert lead.consent.text == "I agree to email"


def test_consent_captured_at_without_a_time_zone_is_rejected() -> None:
    errors = errors_of(body(consent={"marketing": True, "captured_at": "2024-05-01T09:30:00"}))

    assert errors == {"/consent/captured_at": "an RFC 3339 timestamp with a time zone"}


@pytest.mark.parametrize("captured_at", ["yesterday", "2024-13-01T00:00:00Z", 1714555800, "2024-05-01"])
def test_consent_captured_at_that_is_not_a_timestamp_is_rejected(captured_at: object) -> None:
    assert set(errors_of(body(consent={"marketing": True, "captured_at": captured_at}))) == {"/consent/captured_at"}


def test_consent_captured_at_keeps_its_offset() -> None:
    lead, _ = parse_lead(body(consent={"marketing": True, "captured_at": "2024-05-01T11:30:00+02:00"}))

    assert lead.consent.captured_at == datetime(2024, 5, 1, 11, 30, tzinfo=timezone(timedelta(hours=2)))
    assert lead.consent.captured_at == datetime(2024, 5, 1, 9, 30, tzinfo=UTC)


def test_consent_problems_are_reported_with_the_other_fields() -> None:
    errors = errors_of(body(email="bad", consent={"marketing": True, "captured_at": "2024-05-01T09:30:00", "x": 1}))

    assert set(errors) == {"/email", "/consent/captured_at", "/consent/x"}


# --- clean_text -----------------------------------------------------------------------------------


def test_clean_text_removes_the_right_to_left_override() -> None:
    assert clean_text("evil\u202etxt.exe") == "eviltxt.exe"


@pytest.mark.parametrize("ch", ["\u200e", "\u200f", "\u202a", "\u202d", "\u2066", "\u2069", "\u00ad"])
def test_clean_text_removes_other_format_characters(ch: str) -> None:
    assert clean_text(f"a{ch}b") == "ab"


def test_clean_text_keeps_astral_plane_emoji() -> None:
    assert clean_text("Ada 😀 \U0001f9d8") == "Ada 😀 \U0001f9d8"


def test_clean_text_keeps_accented_and_non_latin_letters() -> None:
    assert clean_text("Zoë Ἀθηνᾶ 山田 محمد") == "Zoë Ἀθηνᾶ 山田 محمد"


def test_clean_text_turns_line_breaks_and_tabs_into_single_spaces() -> None:
    assert clean_text("a\r\nb\n\nc\td") == "a b c d"


def test_clean_text_removes_control_characters_without_adding_spaces() -> None:
    assert clean_text("a\x00b\x1bc\x7fd\x85e") == "abcde"


def test_clean_text_removes_zero_width_characters() -> None:
    assert clean_text("\ufeffa\u200bb\u200cc\u200dd\u2060e") == "abcde"


def test_clean_text_collapses_unicode_whitespace_and_trims() -> None:
    assert clean_text("\u00a0 a \u2003\u3000 b \u00a0") == "a b"


def test_clean_text_of_only_invisible_characters_is_empty() -> None:
    assert clean_text("\u200b\u202e\x00 \r\n") == ""


def test_source_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(InvalidLead) as caught:
        parse_lead({"email": "ada@example.com", "source": "website\n", "consent": {"marketing": True}})
    assert [e.field for e in caught.value.errors] == ["/source"]


# --- phone, locale, time zone, utm, metadata --------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "locale", "e164"),
    [
        ("+44 20 7183 8750", None, "+442071838750"),
        ("+1 (650) 253-0000", None, "+16502530000"),
        ("020 7183 8750", "en-GB", "+442071838750"),
        ("030 123456", "de-DE", "+4930123456"),
        ("\u200b+44\t20 7183 8750 ", None, "+442071838750"),
    ],
)
def test_phone_is_stored_in_e164(phone: str, locale: str | None, e164: str) -> None:
    assert parse_lead(body(phone=phone, locale=locale))[0].phone == e164


def test_a_national_phone_number_without_a_region_is_rejected_with_a_hint() -> None:
    reason = errors_of(body(phone="020 7183 8750"))["/phone"]

    assert "national numbers need a locale with a region" in reason


@pytest.mark.parametrize("phone", ["+44 12", "call me", "+1 555 0100 0100 0100 0100", 447700900123, "+" + "1" * 45])
def test_impossible_phone_numbers_are_rejected(phone: object) -> None:
    assert set(errors_of(body(phone=phone))) == {"/phone"}


@pytest.mark.parametrize(
    ("given", "stored"),
    [("en", "en"), ("en-gb", "en-GB"), ("EN_GB", "en-GB"), ("zh-hant-tw", "zh-Hant-TW"), ("es-419", "es-419")],
)
def test_locale_is_a_bcp47_tag_in_canonical_case(given: str, stored: str) -> None:
    assert parse_lead(body(locale=given))[0].locale == stored


@pytest.mark.parametrize("locale", ["english", "e", "en-", "en-GB-x-private-extension", "", 7])
def test_locale_that_is_not_a_language_tag_is_rejected(locale: object) -> None:
    assert set(errors_of(body(locale=locale))) == {"/locale"}


@pytest.mark.parametrize("timezone", ["Europe/London", "America/Argentina/Buenos_Aires", "UTC", "Asia/Kolkata"])
def test_iana_time_zones_are_accepted(timezone: str) -> None:
    assert parse_lead(body(timezone=timezone))[0].timezone == timezone


@pytest.mark.parametrize("timezone", ["Europe/Londres", "GMT+2", "europe/london", "../../etc/passwd", "", 1])
def test_unknown_time_zones_are_rejected(timezone: object) -> None:
    assert set(errors_of(body(timezone=timezone))) == {"/timezone"}


def test_utm_fields_are_cleaned_and_kept() -> None:
    lead, _ = parse_lead(body(utm={"source": " google ", "medium": "cpc", "campaign": "spring\r\nsale", "term": ""}))

    assert lead.utm == Utm(source="google", medium="cpc", campaign="spring sale", term=None)


def test_utm_rejects_unknown_keys_and_long_values() -> None:
    errors = errors_of(body(utm={"source": "x" * 201, "gclid": "abc"}))

    assert set(errors) == {"/utm/source", "/utm/gclid"}
    assert errors["/utm/gclid"] == "unknown field"


def test_utm_must_be_an_object() -> None:
    assert set(errors_of(body(utm="google"))) == {"/utm"}


def test_metadata_is_a_flat_map_of_cleaned_strings() -> None:
    lead, _ = parse_lead(body(metadata={"plan": " pro\u200b ", "ref.code": "A-1"}))

    assert lead.metadata == {"plan": "pro", "ref.code": "A-1"}


def test_metadata_is_bounded_in_entries() -> None:
    assert set(errors_of(body(metadata={f"k{i}": "v" for i in range(21)}))) == {"/metadata"}


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"plan": "x" * 201}, "/metadata/plan"),
        ({"plan": {"nested": "no"}}, "/metadata/plan"),
        ({"plan": 3}, "/metadata/plan"),
        ({"a/b": "x"}, "/metadata/a~1b"),
        ({"k" * 41: "x"}, "/metadata/" + "k" * 41),
        ({"": "x"}, "/metadata/"),
    ],
)
def test_metadata_rejects_nesting_long_values_and_odd_keys(metadata: dict[str, object], field: str) -> None:
    assert set(errors_of(body(metadata=metadata))) == {field}
