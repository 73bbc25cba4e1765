"""From a decoded ``POST /v1/leads`` body and its caller to a lead ready for its transaction.

Plain functions over plain values (no web framework): the honeypot decision, the lead's validation,
the Idempotency-Key and its scope, and who submitted it. The Litestar handler decodes the body, calls
:func:`prepare_submission` and maps what it returns (a :class:`LeadJob`, or :data:`HONEYPOT` for a bot)
to a response; a bad lead or key is :class:`~services.intake.validation.InvalidLead` (422).
"""

from __future__ import annotations

from typing import Final, Literal

from proto.http import FieldError
from services.common import metrics
from services.intake.authentication import Principal
from services.intake.double_opt_in import Policy, must_confirm
from services.intake.idempotency import IdempotencyKey, valid_idempotency_key
from services.intake.leads import LeadJob, Submitter
from services.intake.validation import InvalidLead, clean_text, parse_lead

USER_AGENT_MAX = 512
# What prepare_submission returns for a bot caught by the honeypot: answer as if accepted, store nothing.
HONEYPOT: Final = "honeypot"


def filled_honeypot(raw: object, principal: Principal, field: str) -> tuple[object, bool]:
    """The body without the honeypot ``field``, and whether a bot filled it.

    Public forms carry a field people cannot see; it is removed before validation, and a non-empty value
    means a bot. API clients and signed requests have no honeypot: for them the field is an unknown field
    like any other (and validation refuses it).
    """
    if principal.kind != "public_form" or not isinstance(raw, dict) or field not in raw:
        return raw, False
    cleaned = {name: value for name, value in raw.items() if name != field}
    return cleaned, bool(raw[field])


def idempotency_scope(principal: Principal, client_ip: str) -> str:
    """Whose keys an Idempotency-Key is unique among: an API client's id (however it authenticated), or
    ``<kind>:<ip>`` for callers without one (public forms), so two browsers never share a key."""
    return str(principal.client_id) if principal.client_id else f"{principal.kind}:{client_ip}"


def idempotency_key_of(header: str | None, principal: Principal, client_ip: str, body: bytes) -> IdempotencyKey | None:
    """The request's Idempotency-Key, scoped to its caller and bound to its body; InvalidLead if malformed."""
    if header is None:
        return None
    if not valid_idempotency_key(header):
        raise InvalidLead([FieldError(field="Idempotency-Key", reason="1 to 255 visible ASCII characters")])
    return IdempotencyKey.of(idempotency_scope(principal, client_ip), header, body)


def prepare_submission(
    raw: object,
    body: bytes,
    principal: Principal,
    *,
    client_ip: str,
    user_agent: str | None,
    request_id: str | None,
    idempotency_key: str | None,
    honeypot_field: str,
    double_opt_in: Policy = "off",
) -> LeadJob | Literal["honeypot"]:
    """The lead job for a decoded body ``raw`` (``body`` as received) sent by ``principal`` from
    ``client_ip``; :data:`HONEYPOT` when a bot filled the honeypot; raises InvalidLead. The job must
    confirm first when ``double_opt_in`` (``DOUBLE_OPT_IN``) asks it of this caller's leads."""
    raw, caught = filled_honeypot(raw, principal, honeypot_field)
    if caught:
        return HONEYPOT
    try:
        lead, email_key = parse_lead(raw)
    except InvalidLead:
        metrics.LEADS.labels("rejected").inc()
        raise
    idempotency = idempotency_key_of(idempotency_key, principal, client_ip, body)
    submitter = Submitter(
        client_id=principal.client_id,
        ip=client_ip if client_ip != "unknown" else None,
        user_agent=clean_text(user_agent or "")[:USER_AGENT_MAX] or None,
        request_id=request_id,
    )
    confirm = must_confirm(double_opt_in, public_form=principal.kind == "public_form")
    return LeadJob(lead, email_key, submitter, idempotency, must_confirm=confirm)
