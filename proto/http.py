"""HTTP bodies of the intake API."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec


class Consent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the lead agreed to, in the words they saw, and when."""

    marketing: bool
    text: str | None = None
    captured_at: datetime | None = None


class LeadSubmission(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/leads``: a lead as a client sends it (after validation and sanitization)."""

    email: str
    source: str
    consent: Consent
    first_name: str | None = None
    last_name: str | None = None
    tags: list[str] = []


class LeadReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``POST /v1/leads``: the lead's id, and whether it was a duplicate within the window."""

    id: uuid.UUID
    duplicate: bool


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid field: where (a JSON pointer such as ``/consent/marketing``) and why."""

    field: str
    reason: str


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem details document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] = []
