"""Idempotency keys, the consent ledger, request ids, reading and erasing leads, metrics: over real HTTP
against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from proto.codec import decode_message
from proto.messages import LeadAccepted
from services.common.config import DatabaseSettings
from services.common.db import connect
from services.common.identity import email_hash
from services.common.logs import JsonFormatter
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead
from tests.support.intake import Intake, running_intake
from tests.support.platform import apply_examples, fetch_all

pytestmark = pytest.mark.integration

LEAD = {
    "email": "Ada@Example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "phone": "+44 20 7183 8750",
    "source": "website",
    "tags": ["newsletter"],
    "consent": {"marketing": True, "text": "Yes, send me the newsletter.", "captured_at": "2026-11-26T09:30:00Z"},
    "utm": {"source": "google", "campaign": "spring"},
    "locale": "en-gb",
    "timezone": "Europe/London",
    "metadata": {"plan": "pro"},
}


@pytest.fixture
async def intake(migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[Intake]:
    async with running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix) as running:
        yield running


async def execute(database_url: str, statement: str, *params: object) -> None:
    conn = await connect(DatabaseSettings(database_url=database_url))
    async with conn:
        await conn.execute(statement.encode(), params or None)


async def count(intake: Intake, table: str) -> int:
    [row] = await fetch_all(intake.settings.database_url, f"SELECT count(*) AS n FROM {table}")  # noqa: S608
    return int(row["n"])  # type: ignore[call-overload]


# --- Idempotency-Key -----------------------------------------------------------------------------


async def test_retry_with_the_same_key_and_body_gets_the_first_answer(intake: Intake) -> None:
    headers = {"Idempotency-Key": "order-7f3a"}

    first = await intake.http.post("/v1/leads", json=LEAD, headers=headers)
    retry = await intake.http.post("/v1/leads", json=LEAD, headers=headers)

    assert (first.status_code, retry.status_code) == (202, 202)
    assert retry.json() == first.json() == {"id": first.json()["id"], "duplicate": False}
    assert await count(intake, "leads") == 1
    assert await count(intake, "outbox") == 1


async def test_same_key_with_another_body_gets_422_and_changes_nothing(intake: Intake) -> None:
    headers = {"Idempotency-Key": "order-7f3a"}
    await intake.http.post("/v1/leads", json=LEAD, headers=headers)

    reused = await intake.http.post("/v1/leads", json={**LEAD, "email": "bo@example.com"}, headers=headers)

    assert reused.status_code == 422
    assert reused.json()["errors"] == [
        {"field": "Idempotency-Key", "reason": "already used with a different request body"}
    ]
    assert await count(intake, "leads") == 1


async def test_a_duplicate_answer_is_replayed_as_a_duplicate(intake: Intake) -> None:
    first = await intake.http.post("/v1/leads", json=LEAD)
    headers = {"Idempotency-Key": "second-form"}

    duplicate = await intake.http.post("/v1/leads", json=LEAD, headers=headers)
    replayed = await intake.http.post("/v1/leads", json=LEAD, headers=headers)

    assert duplicate.status_code == replayed.status_code == 200
    assert replayed.json() == {"id": first.json()["id"], "duplicate": True}


async def test_concurrent_retries_with_one_key_create_one_lead(intake: Intake) -> None:
    bodies = [{**LEAD, "email": "same@example.com"}] * 20
    headers = {"Idempotency-Key": "burst"}

    answers = await asyncio.gather(*(intake.http.post("/v1/leads", json=b, headers=headers) for b in bodies))

    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert await count(intake, "leads") == 1


async def test_keys_are_private_to_each_client(intake: Intake) -> None:
    from tests.support.intake import bearer, create_api_client

    _, other = await create_api_client(intake.settings.database_url, "other", ["leads:write"])
    headers = {"Idempotency-Key": "shared-name"}
    mine = await intake.http.post("/v1/leads", json=LEAD, headers=headers)
    async with intake.anonymous(headers=bearer(other)) as client:
        theirs = await client.post("/v1/leads", json={**LEAD, "email": "bo@example.com"}, headers=headers)

    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]


@pytest.mark.parametrize("key", ["", "has space", "x" * 256])
async def test_malformed_idempotency_key_is_a_field_error(intake: Intake, key: str) -> None:
    response = await intake.http.post("/v1/leads", json=LEAD, headers={"Idempotency-Key": key})

    assert response.status_code in (400, 422)
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await count(intake, "leads") == 0


# --- the stored lead, the consent ledger, request ids --------------------------------------------


async def test_lead_is_stored_with_its_consent_record(intake: Intake) -> None:
    response = await intake.http.post("/v1/leads", json=LEAD, headers={"User-Agent": "crm-sync/2.1"})

    read = await intake.http.get(f"/v1/leads/{response.json()['id']}")

    assert read.status_code == 200
    lead = read.json()
    assert {k: lead[k] for k in ("email", "phone", "locale", "timezone", "metadata", "tags")} == {
        "email": "Ada@example.com",
        "phone": "+442071838750",
        "locale": "en-GB",
        "timezone": "Europe/London",
        "metadata": {"plan": "pro"},
        "tags": ["newsletter"],
    }
    assert lead["utm"] == {"source": "google", "campaign": "spring"}
    consent = lead["consent"]
    assert consent["marketing"] is True
    assert consent["text"] == "Yes, send me the newsletter."
    assert consent["captured_at"].startswith("2026-11-26T09:30:00")
    assert consent["ip"] == "127.0.0.1"
    assert consent["user_agent"] == "crm-sync/2.1"
    assert consent["recorded_at"]
    assert lead["enrollments"] == []


async def test_request_id_is_echoed_stored_and_carried_into_the_outbox(intake: Intake) -> None:
    response = await intake.http.post("/v1/leads", json=LEAD, headers={"X-Request-Id": "req-42.a:b"})

    assert response.headers["x-request-id"] == "req-42.a:b"
    [lead] = await fetch_all(intake.settings.database_url, "SELECT request_id FROM leads")
    assert lead == {"request_id": "req-42.a:b"}
    [row] = await fetch_all(intake.settings.database_url, "SELECT payload FROM outbox")
    message = decode_message(bytes(row["payload"]))  # type: ignore[arg-type]
    assert isinstance(message, LeadAccepted)
    assert message.request_id == "req-42.a:b"


@pytest.mark.parametrize("given", [None, "x" * 129, "bad id\\n"])
async def test_a_request_id_is_generated_when_missing_or_unsafe(intake: Intake, given: str | None) -> None:
    headers = {} if given is None else {"X-Request-Id": given}

    response = await intake.http.get("/healthz", headers=headers)

    generated = response.headers["x-request-id"]
    assert len(generated) == 32
    assert generated != given


async def test_error_responses_carry_the_request_id_too(intake: Intake) -> None:
    response = await intake.http.post("/v1/leads", json={"email": "nope"}, headers={"X-Request-Id": "r-1"})

    assert response.status_code == 422
    assert response.headers["x-request-id"] == "r-1"


# --- GET ----------------------------------------------------------------------------------------


async def test_reading_an_unknown_lead_is_404(intake: Intake) -> None:
    response = await intake.http.get("/v1/leads/00000000-0000-4000-8000-000000000000")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_reading_with_a_malformed_id_is_400(intake: Intake) -> None:
    response = await intake.http.get("/v1/leads/not-a-uuid")

    assert response.status_code in (400, 404)
    assert response.headers["content-type"].startswith("application/problem+json")


async def enrolled_lead(intake: Intake) -> str:
    """A lead posted over HTTP, enrolled into the example Sequence with its first message queued."""
    await apply_examples(intake.settings.database_url)
    response = await intake.http.post("/v1/leads", json=LEAD)
    lead_id = response.json()["id"]
    conn = await connect(DatabaseSettings(database_url=intake.settings.database_url))
    async with conn:
        await enroll_lead(conn, uuid.UUID(lead_id))
        await emit_due_steps(conn, limit=10, topic=intake.settings.topic_email_dispatch)
    return str(lead_id)


async def test_reading_a_lead_shows_its_enrollments_and_messages(intake: Intake) -> None:
    lead_id = await enrolled_lead(intake)

    lead = (await intake.http.get(f"/v1/leads/{lead_id}")).json()

    [enrollment] = lead["enrollments"]
    assert enrollment["sequence"].endswith("/welcome")
    assert enrollment["status"] == "active"
    assert [(m["step_position"], m["status"]) for m in enrollment["messages"]] == [(0, "queued")]


# --- DELETE (GDPR erasure) ------------------------------------------------------------------------


async def test_erasing_by_id_leaves_only_a_hashed_suppression(intake: Intake) -> None:
    lead_id = await enrolled_lead(intake)

    erased = await intake.http.delete(f"/v1/leads/{lead_id}")
    again = await intake.http.delete(f"/v1/leads/{lead_id}")

    assert (erased.status_code, again.status_code) == (204, 204)
    for table in ("leads", "lead_identities", "enrollments", "messages", "idempotency_keys"):
        assert await count(intake, table) == 0, table
    suppressions = await fetch_all(intake.settings.database_url, "SELECT email_hash, reason FROM suppressions")
    assert suppressions == [
        {"email_hash": email_hash("ada@example.com", intake.settings.suppression_hash_key), "reason": "erased"}
    ]
    assert (await intake.http.get(f"/v1/leads/{lead_id}")).status_code == 404
    dump = json.dumps(await fetch_all(intake.settings.database_url, "SELECT * FROM suppressions"), default=str).lower()
    assert "ada" not in dump


async def test_erasing_by_email_erases_every_lead_of_the_address(intake: Intake) -> None:
    await intake.http.post("/v1/leads", json=LEAD)
    # A second lead of the same person, after the duplicate window.
    await execute(intake.settings.database_url, "UPDATE lead_identities SET accepted_at = now() - interval '2 days'")
    await intake.http.post("/v1/leads", json={**LEAD, "email": "ada@example.com"})
    await intake.http.post("/v1/leads", json={**LEAD, "email": "bo@example.com"})
    assert await count(intake, "leads") == 3

    erased = await intake.http.delete("/v1/leads", params={"email": " ADA@example.COM "})

    assert erased.status_code == 204
    rows = await fetch_all(intake.settings.database_url, "SELECT email FROM leads")
    assert rows == [{"email": "bo@example.com"}]
    assert await count(intake, "suppressions") == 1


async def test_erasing_an_address_never_seen_still_suppresses_it(intake: Intake) -> None:
    response = await intake.http.delete("/v1/leads", params={"email": "never@example.com"})

    assert response.status_code == 204
    rows = await fetch_all(intake.settings.database_url, "SELECT email_hash, reason FROM suppressions")
    assert rows == [
        {"email_hash": email_hash("never@example.com", intake.settings.suppression_hash_key), "reason": "erased"}
    ]


async def test_erasing_an_unsubscribed_address_records_the_erasure(intake: Intake) -> None:
    await execute(
        intake.settings.database_url,
        "INSERT INTO suppressions (email_hash, reason, keyed) VALUES (%s, 'unsubscribed', true)",
        email_hash("ada@example.com", intake.settings.suppression_hash_key),
    )

    await intake.http.delete("/v1/leads", params={"email": "ada@example.com"})

    rows = await fetch_all(intake.settings.database_url, "SELECT reason FROM suppressions")
    assert rows == [{"reason": "erased"}]


async def test_erasing_by_an_invalid_email_is_422(intake: Intake) -> None:
    response = await intake.http.delete("/v1/leads", params={"email": "not-an-address"})

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["email"]
    assert await count(intake, "suppressions") == 0


# --- metrics -------------------------------------------------------------------------------------


async def test_metrics_count_requests_by_route_and_status_and_lead_outcomes(intake: Intake) -> None:
    await intake.http.post("/v1/leads", json=LEAD)
    await intake.http.post("/v1/leads", json=LEAD)
    await intake.http.post("/v1/leads", json={"email": "nope"})

    text = (await intake.http.get(intake.metrics_url)).text

    assert 'healingwork_http_requests_total{method="POST",route="/v1/leads",status="202"}' in text
    assert 'healingwork_http_requests_total{method="POST",route="/v1/leads",status="422"}' in text
    assert 'healingwork_http_request_duration_seconds_bucket{le="0.05",method="POST",route="/v1/leads"}' in text
    for outcome in ("accepted", "duplicate", "rejected"):
        assert f'healingwork_leads_total{{outcome="{outcome}"}}' in text
    assert "healingwork_outbox_backlog " in text
    assert "healingwork_outbox_oldest_unpublished_age_seconds " in text


async def test_access_log_lines_carry_the_request_id_and_never_the_query(intake: Intake) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter("intake"))
    access = logging.getLogger("services.intake.access")
    access.addHandler(handler)
    previous = access.level
    access.setLevel(logging.INFO)
    try:
        await intake.http.post("/v1/leads", json=LEAD, headers={"X-Request-Id": "trace-7"})
        await intake.http.delete("/v1/leads", params={"email": "ada@example.com"}, headers={"X-Request-Id": "trace-8"})
    finally:
        access.removeHandler(handler)
        access.setLevel(previous)

    entries = [json.loads(line) for line in lines]
    assert [(e["request_id"], e["method"], e["route"], e["status"]) for e in entries] == [
        ("trace-7", "POST", "/v1/leads", 202),
        ("trace-8", "DELETE", "/v1/leads", 204),
    ]
    assert "ada" not in "".join(lines).lower()
