"""Validation and sanitization of submitted leads. Pure functions: no I/O, no DNS.

Every problem is collected, so a client learns about all its invalid fields in one response.
"""

from __future__ import annotations

import re
import unicodedata
import zoneinfo
from datetime import datetime
from functools import cache
from typing import Any

import msgspec
import phonenumbers
from email_validator import EmailNotValidError, validate_email

from proto.http import Consent, FieldError, LeadSubmission, Utm

NAME_MAX = 100
TAG_MAX = 64
TAGS_MAX = 20
CONSENT_TEXT_MAX = 2000
SOURCE_PATTERN = re.compile(r"[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?")
PHONE_INPUT_MAX = 40
UTM_MAX = 200
METADATA_ENTRIES_MAX = 20
METADATA_VALUE_MAX = 200
METADATA_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
# BCP 47, the part forms use: language, optional script, optional region (en, en-GB, zh-Hant-TW, es-419).
LOCALE_PATTERN = re.compile(r"([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}|[0-9]{3}))?")
_ZERO_WIDTH = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"}


class InvalidLead(Exception):
    """The submission has invalid fields; ``errors`` names each one."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))


def clean_text(value: str) -> str:
    """Remove control, format and zero-width characters (CR and LF included), collapse whitespace, trim."""
    kept = "".join(
        " " if ch in "\r\n\t" else ch
        for ch in value
        if ch in "\r\n\t" or (unicodedata.category(ch) not in ("Cc", "Cf", "Cs") and ch not in _ZERO_WIDTH)
    )
    return " ".join(kept.split())


def normalize_email(value: str) -> tuple[str, str]:
    """Return (address as stored, key for the duplicate check); raises ValueError with a reason.

    The stored address keeps the local part as given (some providers treat case as significant) with
    the domain lower-cased and IDNA-encoded; the key compares whole addresses case-insensitively.
    """
    try:
        result = validate_email(value.strip(), check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as error:
        raise ValueError(str(error)) from error
    stored = f"{result.local_part}@{result.ascii_domain}"
    return stored, stored.lower()


def parse_lead(raw: object) -> tuple[LeadSubmission, str]:
    """Validate and sanitize a decoded JSON body; returns the lead and its normalized email key."""
    errors: list[FieldError] = []

    def fail(field: str, reason: str) -> None:
        errors.append(FieldError(field=field, reason=reason))

    if not isinstance(raw, dict):
        raise InvalidLead([FieldError(field="/", reason="the body must be a JSON object")])
    known = set(LeadSubmission.__struct_fields__)
    for name in sorted(set(raw) - known):
        fail(f"/{name}", "unknown field")

    email = stored_email = ""
    value = raw.get("email")
    if not isinstance(value, str) or not value.strip():
        fail("/email", "required, a string")
    else:
        try:
            stored_email, email = normalize_email(value)
        except ValueError as error:
            fail("/email", str(error))

    source = raw.get("source")
    if not isinstance(source, str) or not SOURCE_PATTERN.fullmatch(source):
        fail("/source", "required, a slug: lower-case letters, digits, '.', '_' or '-', at most 64 characters")

    names: dict[str, str | None] = {}
    for field in ("first_name", "last_name"):
        value = raw.get(field)
        if value is None:
            names[field] = None
        elif not isinstance(value, str):
            fail(f"/{field}", "must be a string")
        else:
            cleaned = clean_text(value)
            if len(cleaned) > NAME_MAX:
                fail(f"/{field}", f"at most {NAME_MAX} characters")
            names[field] = cleaned or None

    tags: list[str] = []
    value = raw.get("tags", [])
    if not isinstance(value, list) or len(value) > TAGS_MAX:
        fail("/tags", f"a list of at most {TAGS_MAX} strings")
    else:
        for index, tag in enumerate(value):
            cleaned = clean_text(tag).lower() if isinstance(tag, str) else ""
            if not cleaned or len(cleaned) > TAG_MAX:
                fail(f"/tags/{index}", f"a non-empty string of at most {TAG_MAX} characters")
            elif cleaned not in tags:
                tags.append(cleaned)

    consent = _parse_consent(raw.get("consent"), fail)

    locale: str | None = None
    value = raw.get("locale")
    if value is not None:
        locale = normalize_locale(value) if isinstance(value, str) else None
        if locale is None:
            fail("/locale", "a BCP 47 language tag such as 'en' or 'en-GB'")

    timezone: str | None = None
    value = raw.get("timezone")
    if value is not None:
        if isinstance(value, str) and value in iana_time_zones():
            timezone = value
        else:
            fail("/timezone", "an IANA time zone name such as 'Europe/London'")

    phone: str | None = None
    value = raw.get("phone")
    if value is not None:
        try:
            phone = normalize_phone(value, region=locale_region(locale))
        except ValueError as error:
            fail("/phone", str(error))

    utm = _parse_utm(raw.get("utm"), fail)
    metadata = _parse_metadata(raw.get("metadata"), fail)

    if errors or consent is None or utm is None or metadata is None:
        raise InvalidLead(errors)
    lead = LeadSubmission(
        email=stored_email,
        source=str(source),
        consent=consent,
        first_name=names.get("first_name"),
        last_name=names.get("last_name"),
        phone=phone,
        tags=tags,
        utm=utm,
        locale=locale,
        timezone=timezone,
        metadata=metadata,
    )
    return lead, email


@cache
def iana_time_zones() -> frozenset[str]:
    """Every IANA time zone name this machine knows (the system tz database, else ``tzdata``)."""
    return frozenset(zoneinfo.available_timezones())


def normalize_locale(value: str) -> str | None:
    """A BCP 47 tag in canonical case (``en-gb`` → ``en-GB``, ``zh_hant_tw`` → ``zh-Hant-TW``); None if invalid."""
    match = LOCALE_PATTERN.fullmatch(value.strip())
    if match is None:
        return None
    language, script, region = match.groups()
    parts = [language.lower()]
    if script:
        parts.append(script.title())
    if region:
        parts.append(region.upper())
    return "-".join(parts)


def locale_region(locale: str | None) -> str | None:
    """The two-letter region of a canonical locale (``en-GB`` → ``GB``), used to read national phone numbers."""
    if locale is None:
        return None
    last = locale.rsplit("-", 1)[-1]
    return last if len(last) == 2 and last.isupper() else None


def normalize_phone(value: object, *, region: str | None) -> str:
    """A phone number in E.164 (``+442071838750``); raises ValueError with a reason.

    International numbers (leading ``+``) always work; a national number needs the region of
    the lead's locale. No network lookups: the numbering plan ships with ``phonenumbers``.
    """
    if not isinstance(value, str) or not value.strip() or len(value) > PHONE_INPUT_MAX:
        raise ValueError(f"a phone number of at most {PHONE_INPUT_MAX} characters")
    try:
        number = phonenumbers.parse(clean_text(value), region)
    except phonenumbers.NumberParseException as error:
        hint = "" if region else " (national numbers need a locale with a region, or use +<country code>)"
        raise ValueError(f"not a phone number{hint}: {error._msg}") from error
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _parse_utm(value: Any, fail: Any) -> Utm | None:
    if value is None:
        return Utm()
    if not isinstance(value, dict):
        fail("/utm", "an object with source, medium, campaign, term, content")
        return None
    ok = True
    for name in sorted(set(value) - set(Utm.__struct_fields__)):
        fail(f"/utm/{name}", "unknown field")
        ok = False
    fields: dict[str, str | None] = {}
    for name in Utm.__struct_fields__:
        item = value.get(name)
        if item is None:
            continue
        cleaned = clean_text(item) if isinstance(item, str) else None
        if cleaned is None or len(cleaned) > UTM_MAX:
            fail(f"/utm/{name}", f"a string of at most {UTM_MAX} characters")
            ok = False
        else:
            fields[name] = cleaned or None
    return Utm(**fields) if ok else None


def _parse_metadata(value: Any, fail: Any) -> dict[str, str] | None:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > METADATA_ENTRIES_MAX:
        fail("/metadata", f"an object of at most {METADATA_ENTRIES_MAX} string values")
        return None
    ok = True
    metadata: dict[str, str] = {}
    for key in sorted(value):
        item = value[key]
        pointer = "/metadata/" + key.replace("~", "~0").replace("/", "~1")
        if not METADATA_KEY_PATTERN.fullmatch(key):
            fail(pointer, "keys are 1 to 40 letters, digits, '_', '.' or '-', starting with a letter or digit")
            ok = False
        elif not isinstance(item, str) or len(cleaned := clean_text(item)) > METADATA_VALUE_MAX:
            fail(pointer, f"a string of at most {METADATA_VALUE_MAX} characters")
            ok = False
        else:
            metadata[key] = cleaned
    return metadata if ok else None


def _parse_consent(value: Any, fail: Any) -> Consent | None:
    if not isinstance(value, dict):
        fail("/consent", "required, an object with a boolean 'marketing'")
        return None
    ok = True
    for name in sorted(set(value) - set(Consent.__struct_fields__)):
        fail(f"/consent/{name}", "unknown field")
        ok = False
    if not isinstance(value.get("marketing"), bool):
        fail("/consent/marketing", "required, true or false")
        ok = False
    text = value.get("text")
    if text is not None and (not isinstance(text, str) or len(text) > CONSENT_TEXT_MAX):
        fail("/consent/text", f"a string of at most {CONSENT_TEXT_MAX} characters")
        ok = False
    captured_at: datetime | None = None
    if value.get("captured_at") is not None:
        try:
            captured_at = msgspec.convert(value["captured_at"], datetime)
            if captured_at.tzinfo is None:
                raise msgspec.ValidationError("no time zone")
        except msgspec.ValidationError:
            fail("/consent/captured_at", "an RFC 3339 timestamp with a time zone")
            ok = False
    if not ok:
        return None
    return Consent(
        marketing=value["marketing"],
        text=clean_text(text) if isinstance(text, str) else None,
        captured_at=captured_at,
    )
