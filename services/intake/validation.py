"""Validation and sanitization of submitted leads. Pure functions: no I/O, no DNS.

Every problem is collected, so a client learns about all its invalid fields in one response.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Any

import msgspec
from email_validator import EmailNotValidError, validate_email

from proto.http import Consent, FieldError, LeadSubmission

NAME_MAX = 100
TAG_MAX = 64
TAGS_MAX = 20
CONSENT_TEXT_MAX = 2000
SOURCE_PATTERN = re.compile(r"[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?")
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

    if errors or consent is None:
        raise InvalidLead(errors)
    lead = LeadSubmission(
        email=stored_email,
        source=str(source),
        consent=consent,
        first_name=names.get("first_name"),
        last_name=names.get("last_name"),
        tags=tags,
    )
    return lead, email


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
