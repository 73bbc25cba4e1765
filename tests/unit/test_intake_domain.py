"""The intake's decisions as plain functions (no HTTP): the honeypot, the Idempotency-Key scope,
scopes, credentials read from headers, bodies, and the one table that maps their errors to HTTP."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from proto.http import FieldError
from services.common.errors import CallerError
from services.common.signatures import SignatureExpired, SignatureMismatch
from services.common.tokens import InvalidToken
from services.intake.authentication import (
    ANONYMOUS,
    PUBLIC_FORM,
    MalformedSignature,
    MissingClientId,
    MissingCredentials,
    MissingScope,
    Principal,
    ReplayedSignature,
    UnknownApiKey,
    UnknownClient,
    authorize,
    presented_api_key,
)
from services.intake.bodies import MalformedBody, decode_json
from services.intake.generic_webhook import (
    InvalidWebhookBody,
    MalformedWebhookTimestamp,
    UnsignedWebhook,
    parse_generic,
)
from services.intake.idempotency import IdempotencyKey, IdempotencyKeyReused
from services.intake.problems import DOMAIN_PROBLEMS, problem_for
from services.intake.provider_events import AdapterNotConfigured
from services.intake.rate_limit import RateLimited
from services.intake.sns import SnsRejected, SnsUnavailable
from services.intake.stats_query import InvalidQuery
from services.intake.submission import (
    HONEYPOT,
    filled_honeypot,
    idempotency_key_of,
    idempotency_scope,
    prepare_submission,
)
from services.intake.validation import InvalidLead
from services.intake.webhook_endpoints import InvalidWebhookEndpoint, NoSuchWebhookDelivery, NoSuchWebhookEndpoint

CLIENT = Principal(kind="api_key", scopes=frozenset({"leads:write"}), client_id=uuid.uuid4(), name="crm")
LEAD = {"email": "ada@example.com", "source": "website", "consent": {"marketing": True}}


# --- scopes and credentials ----------------------------------------------------------------------


def test_a_client_without_the_scope_is_refused_naming_it() -> None:
    with pytest.raises(MissingScope, match="lacks the 'leads:read' scope"):
        authorize(CLIENT, "leads:read")


def test_a_client_with_the_scope_or_admin_is_authorized() -> None:
    authorize(CLIENT, "leads:write")
    authorize(Principal(kind="api_key", scopes=frozenset({"admin"})), "leads:read")
    authorize(ANONYMOUS, "admin")


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "expected"),
    [
        ("Bearer hw_key", None, "hw_key"),
        ("bearer  hw_key ", "other", "hw_key"),
        ("Basic abc", "hw_x", "hw_x"),
        ("Bearer ", None, None),
        (None, "", None),
        (None, None, None),
    ],
)
def test_the_api_key_comes_from_a_bearer_token_else_x_api_key(
    authorization: str | None, x_api_key: str | None, expected: str | None
) -> None:
    assert presented_api_key(authorization, x_api_key) == expected


# --- the honeypot and the Idempotency-Key --------------------------------------------------------


def test_a_filled_honeypot_of_a_public_form_is_caught_and_removed() -> None:
    cleaned, caught = filled_honeypot({**LEAD, "website_url": "http://spam"}, PUBLIC_FORM, "website_url")

    assert caught
    assert cleaned == LEAD


def test_an_empty_honeypot_is_removed_without_catching_anyone() -> None:
    assert filled_honeypot({**LEAD, "website_url": ""}, PUBLIC_FORM, "website_url") == (LEAD, False)


def test_api_clients_have_no_honeypot_the_field_stays_for_validation_to_refuse() -> None:
    raw = {**LEAD, "website_url": "x"}

    assert filled_honeypot(raw, CLIENT, "website_url") == (raw, False)
    with pytest.raises(InvalidLead) as invalid:
        prepare_submission(
            raw, b"{}", CLIENT, client_ip="1.2.3.4", user_agent=None, request_id=None,
            idempotency_key=None, honeypot_field="website_url",
        )  # fmt: skip
    assert [e.field for e in invalid.value.errors] == ["/website_url"]


def test_idempotency_keys_are_scoped_by_client_id_else_by_kind_and_ip() -> None:
    assert idempotency_scope(CLIENT, "1.2.3.4") == str(CLIENT.client_id)
    assert idempotency_scope(PUBLIC_FORM, "1.2.3.4") == "public_form:1.2.3.4"
    assert idempotency_scope(ANONYMOUS, "unknown") == "anonymous:unknown"


def test_an_idempotency_key_is_bound_to_its_scope_and_body() -> None:
    key = idempotency_key_of("retry-1", PUBLIC_FORM, "1.2.3.4", b"{}")

    assert key == IdempotencyKey.of("public_form:1.2.3.4", "retry-1", b"{}")
    assert idempotency_key_of(None, CLIENT, "1.2.3.4", b"{}") is None


@pytest.mark.parametrize("header", ["", "has space", "x" * 256, "é"])
def test_a_malformed_idempotency_key_is_a_field_error(header: str) -> None:
    with pytest.raises(InvalidLead) as invalid:
        idempotency_key_of(header, CLIENT, "1.2.3.4", b"{}")

    assert invalid.value.errors == [FieldError(field="Idempotency-Key", reason="1 to 255 visible ASCII characters")]


def test_a_submission_becomes_a_lead_job_with_its_submitter() -> None:
    job = prepare_submission(
        dict(LEAD), b"{}", CLIENT, client_ip="unknown", user_agent="Agent\x00/1", request_id="req-1",
        idempotency_key="k", honeypot_field="website_url",
    )  # fmt: skip

    assert job != HONEYPOT
    assert not isinstance(job, str)
    assert job.email_key == "ada@example.com"
    assert job.submitter.client_id == CLIENT.client_id
    assert job.submitter.ip is None  # "unknown" is not an address
    assert job.submitter.request_id == "req-1"
    assert job.idempotency == IdempotencyKey.of(str(CLIENT.client_id), "k", b"{}")


def test_a_bot_caught_by_the_honeypot_gets_no_lead_job() -> None:
    job = prepare_submission(
        {**LEAD, "website_url": "x"}, b"{}", PUBLIC_FORM, client_ip="1.2.3.4", user_agent=None,
        request_id=None, idempotency_key=None, honeypot_field="website_url",
    )  # fmt: skip

    assert job == HONEYPOT


# --- bodies --------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{", b"\xff", b"[" * 100_000, b'{"n": 1e999999}'])
def test_a_body_that_is_not_json_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedBody, match="The body is not valid JSON"):
        decode_json(body)


def test_a_generic_webhook_event_of_an_unknown_type_names_the_field() -> None:
    body = msgspec.json.encode({"events": [{"id": "e", "type": "delivered", "email": "ada@example.com"}]})

    with pytest.raises(InvalidWebhookBody) as invalid:
        parse_generic(body)

    assert [e.field for e in invalid.value.errors] == ["/events/0/type"]


# --- the one table from domain errors to problem documents ---------------------------------------

DOMAIN_ERRORS: list[tuple[Exception, int, dict[str, object]]] = [
    (MissingCredentials(), 401, {"www-authenticate": 'Bearer realm="healingwork"'}),
    (UnknownApiKey(), 401, {"www-authenticate": 'Bearer realm="healingwork"'}),
    (MalformedSignature(), 401, {}),
    (MissingClientId(), 401, {}),
    (UnknownClient(), 401, {}),
    (ReplayedSignature(), 401, {}),
    (SignatureExpired("The signature's timestamp is more than 300 s off."), 401, {}),
    (SignatureMismatch("The signature does not match."), 401, {}),
    (MissingScope("admin"), 403, {}),
    (RateLimited(2.5), 429, {"retry-after": "3"}),
    (InvalidToken(), 404, {}),
    (MalformedBody("The body is not valid JSON: x"), 400, {}),
    (InvalidLead([FieldError(field="/email", reason="bad")]), 422, {}),
    (IdempotencyKeyReused(), 422, {}),
    (InvalidQuery([FieldError(field="from", reason="bad")]), 422, {}),
    (AdapterNotConfigured("The generic webhook is not configured (WEBHOOK_SECRET)."), 404, {}),
    (UnsignedWebhook(), 401, {}),
    (MalformedWebhookTimestamp(), 401, {}),
    (InvalidWebhookBody(FieldError(field="/events", reason="bad")), 422, {}),
    (SnsRejected("bad signature"), 401, {}),
    (SnsUnavailable("timed out"), 503, {"retry-after": "30"}),
    (InvalidWebhookEndpoint([FieldError(field="/url", reason="points to 127.0.0.1")]), 422, {}),
    (NoSuchWebhookEndpoint(), 404, {}),
    (NoSuchWebhookDelivery(), 404, {}),
]


@pytest.mark.parametrize(("error", "status", "headers"), DOMAIN_ERRORS, ids=lambda v: type(v).__name__)
def test_each_domain_error_is_one_problem_document(error: Exception, status: int, headers: dict[str, str]) -> None:
    response = problem_for(error)
    body = msgspec.json.decode(response.content)

    assert response.status_code == status
    assert response.media_type == "application/problem+json"
    assert body["status"] == status
    assert body["detail"]
    assert {k.lower(): v for k, v in response.headers.items()} == headers


def test_a_caller_error_without_a_row_of_its_own_is_a_400_never_a_500() -> None:
    class NewFailure(CallerError):
        message = "Something the caller did."

    response = problem_for(NewFailure())

    assert response.status_code == 400
    assert msgspec.json.decode(response.content)["detail"] == "Something the caller did."


def test_every_listed_domain_error_has_a_case_above() -> None:
    covered = {kind for error, _, _ in DOMAIN_ERRORS for kind in type(error).__mro__}

    assert set(DOMAIN_PROBLEMS) <= covered


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            MissingScope("admin"),
            {"title": "Forbidden", "status": 403, "detail": "This client lacks the 'admin' scope."},
        ),
        (InvalidToken(), {"title": "Not found", "status": 404, "detail": "This link is not valid."}),
        (
            IdempotencyKeyReused(),
            {
                "title": "Invalid lead",
                "status": 422,
                "detail": "One or more fields are invalid; see errors.",
                "errors": [{"field": "Idempotency-Key", "reason": "already used with a different request body"}],
            },
        ),
        (
            InvalidWebhookBody(FieldError(field="/events/0/type", reason="Invalid enum value 'delivered'")),
            {
                "title": "Invalid webhook body",
                "status": 422,
                "detail": "The events are not valid; see errors.",
                "errors": [{"field": "/events/0/type", "reason": "Invalid enum value 'delivered'"}],
            },
        ),
        (
            SnsRejected("bad signature"),
            {
                "title": "Authentication required",
                "status": 401,
                # One answer for every refusal since issue 15: the reason ("bad signature") is only logged.
                "detail": "The SNS message is not trusted.",
            },
        ),
    ],
    ids=["scope", "token", "idempotency", "webhook-body", "sns"],
)
def test_problem_bodies_read_as_before_the_table(error: Exception, expected: dict[str, object]) -> None:
    assert msgspec.json.decode(problem_for(error).content) == expected
