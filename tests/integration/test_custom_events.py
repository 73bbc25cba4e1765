"""Custom events over real HTTP, PostgreSQL and the broker: POST /v1/leads/{id}/events and
POST /v1/events (by email), scope events:write, Idempotency-Key, reserved names, and the wake-up of
the lead's waiting enrollments (and only that lead's)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.config import DatabaseSettings
from services.common.db import connect
from services.common.sequences import apply_sequence, parse_sequence_document
from tests.support.intake import Intake, bearer, create_api_client, running_intake
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration

LEAD = {"email": "ada@example.com", "source": "website", "consent": {"marketing": True}}


@pytest.fixture
async def intake(migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[Intake]:
    async with running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix) as running:
        yield running


async def submit_lead(intake: Intake, email: str = "ada@example.com") -> uuid.UUID:
    response = await intake.http.post("/v1/leads", json={**LEAD, "email": email})
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


async def events_of(intake: Intake, lead: uuid.UUID) -> list[dict[str, Any]]:
    return await fetch_all(
        intake.settings.database_url,
        "SELECT type, properties, occurred_at FROM events WHERE lead_id = %s ORDER BY id",
        lead,
    )


async def test_an_event_for_a_lead_is_stored_with_its_properties_and_time(intake: Intake) -> None:
    lead = await submit_lead(intake)

    response = await intake.http.post(
        f"/v1/leads/{lead}/events",
        json={"type": "purchased", "properties": {"total": 99.5, "sku": "A1"}, "occurred_at": "2026-01-02T03:04:05Z"},
    )

    assert response.status_code == 201, response.text
    assert response.json()["lead_id"] == str(lead)
    [event] = await events_of(intake, lead)
    assert (event["type"], event["properties"]) == ("purchased", {"total": 99.5, "sku": "A1"})
    assert event["occurred_at"].isoformat() == "2026-01-02T03:04:05+00:00"  # type: ignore[attr-defined]


async def test_an_event_by_email_goes_to_the_newest_lead_of_the_address(intake: Intake) -> None:
    lead = await submit_lead(intake)

    response = await intake.http.post("/v1/events", json={"type": "trial-started", "email": "ADA@example.com"})

    assert response.status_code == 201, response.text
    assert [e["type"] for e in await events_of(intake, lead)] == ["trial-started"]


@pytest.mark.parametrize("reserved", ["opened", "clicked", "sent", "bounced", "complained", "unsubscribed"])
async def test_the_platforms_own_event_names_are_refused_with_422_naming_the_field(
    intake: Intake, reserved: str
) -> None:
    lead = await submit_lead(intake)

    response = await intake.http.post(f"/v1/leads/{lead}/events", json={"type": reserved})

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == "/type"
    assert await events_of(intake, lead) == []


async def test_a_retry_with_the_same_idempotency_key_returns_the_first_event(intake: Intake) -> None:
    lead = await submit_lead(intake)
    body = {"type": "purchased", "properties": {"order": 7}}
    headers = {"Idempotency-Key": "order-7"}

    first = await intake.http.post(f"/v1/leads/{lead}/events", json=body, headers=headers)
    again = await intake.http.post(f"/v1/leads/{lead}/events", json=body, headers=headers)
    other = await intake.http.post(f"/v1/leads/{lead}/events", json={**body, "type": "refunded"}, headers=headers)

    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 422)
    assert again.json() == {**first.json(), "duplicate": True}
    assert len(await events_of(intake, lead)) == 1


async def test_an_unknown_lead_is_404_and_a_client_without_the_scope_is_403(intake: Intake) -> None:
    missing = await intake.http.post(f"/v1/leads/{uuid.uuid4()}/events", json={"type": "purchased"})
    _, key = await create_api_client(intake.settings.database_url, "leads-only", ["leads:write"])
    async with intake.anonymous(headers=bearer(key)) as client:
        forbidden = await client.post("/v1/events", json={"type": "purchased", "email": "ada@example.com"})

    assert (missing.status_code, forbidden.status_code) == (404, 403)


async def test_an_event_wakes_only_its_leads_waiting_enrollments(intake: Intake) -> None:
    resource = parse_sequence_document(
        {
            "apiVersion": "healingwork.io/v1alpha1",
            "kind": "Sequence",
            "metadata": {"name": "goal"},
            "spec": {
                "trigger": {"sources": ["website"]},
                "exitWhen": "events.exists(e, e.type == 'purchased')",
                "steps": [{"name": "later", "delay": "2d", "subject": "Later", "text": "x"}],
            },
        },
        "goal",
    )
    conn = await connect(DatabaseSettings(database_url=intake.settings.database_url))
    async with conn, conn.transaction():
        await apply_sequence(conn, resource)
    buyer, other = await submit_lead(intake), await submit_lead(intake, "bo@example.com")
    for lead in (buyer, other):  # as the scheduler would, without waiting for it
        async with await connect(DatabaseSettings(database_url=intake.settings.database_url)) as c:
            await c.execute(
                """INSERT INTO enrollments (id, lead_id, sequence_id, revision, next_step, next_run_at, status)
                   SELECT gen_random_uuid(), %s, id, current_revision, 0, now() + interval '2 days', 'active'
                   FROM sequences""",
                (lead,),
            )
            await c.commit()

    response = await intake.http.post(f"/v1/leads/{buyer}/events", json={"type": "purchased"})

    assert response.status_code == 201
    rows = await fetch_all(
        intake.settings.database_url,
        "SELECT lead_id, next_run_at <= now() AS woken, resume_at IS NOT NULL AS remembered FROM enrollments",
    )
    assert {(r["lead_id"], r["woken"], r["remembered"]) for r in rows} == {(buyer, True, True), (other, False, False)}
