"""The intake API over real HTTP, against a real PostgreSQL and broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from services.common.config import IntakeSettings
from tests.support.intake import running_intake
from tests.support.platform import fetch_all, free_port, make_settings, serve_intake

pytestmark = pytest.mark.integration

LEAD = {"email": "ada@example.com", "first_name": "Ada", "source": "website", "consent": {"marketing": True}}


@pytest.fixture
async def intake(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, IntakeSettings]]:
    async with running_intake(
        migrated_database_url, kafka_bootstrap_servers, topic_prefix, db_pool_max_size=10
    ) as intake:
        yield intake.http, intake.settings


async def test_new_lead_is_accepted_and_queued_in_one_transaction(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake

    response = await client.post("/v1/leads", json=LEAD)

    assert response.status_code == 202
    body = response.json()
    assert body["duplicate"] is False
    leads = await fetch_all(settings.database_url, "SELECT id::text, email, source FROM leads")
    assert leads == [{"id": body["id"], "email": "ada@example.com", "source": "website"}]
    outbox = await fetch_all(settings.database_url, "SELECT topic, key FROM outbox")
    assert outbox == [{"topic": settings.topic_leads_accepted, "key": body["id"]}]


async def test_duplicate_within_window_returns_existing_id(intake: tuple[httpx.AsyncClient, IntakeSettings]) -> None:
    client, settings = intake
    first = await client.post("/v1/leads", json=LEAD)

    again = await client.post("/v1/leads", json={**LEAD, "email": "  ADA@Example.COM "})

    assert again.status_code == 200
    assert again.json() == {"id": first.json()["id"], "duplicate": True}
    assert await fetch_all(settings.database_url, "SELECT count(*) AS n FROM leads") == [{"n": 1}]


async def test_fifty_simultaneous_identical_posts_create_exactly_one_lead(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake

    responses = await asyncio.gather(*(client.post("/v1/leads", json=LEAD) for _ in range(50)))

    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert sorted(r.status_code for r in responses) == [200] * 49 + [202]
    assert await fetch_all(settings.database_url, "SELECT count(*) AS n FROM leads") == [{"n": 1}]
    assert await fetch_all(settings.database_url, "SELECT count(*) AS n FROM outbox") == [{"n": 1}]


async def test_invalid_lead_gets_problem_json_naming_every_field_and_changes_nothing(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake

    response = await client.post(
        "/v1/leads", json={"email": "not-an-email", "source": "Web Site!", "consent": {}, "color": "blue"}
    )

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 422
    fields = {error["field"] for error in problem["errors"]}
    assert fields == {"/email", "/source", "/consent/marketing", "/color"}
    assert await fetch_all(settings.database_url, "SELECT count(*) AS n FROM leads") == [{"n": 0}]


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"email": ', "application/json", 400),
        (b"email=ada@example.com", "application/x-www-form-urlencoded", 415),
        (json.dumps({**LEAD, "first_name": "x" * 70000}).encode(), "application/json", 413),
        (b"[1, 2, 3]", "application/json", 422),
    ],
    ids=["malformed-json", "not-json", "too-large", "not-an-object"],
)
async def test_bad_requests_get_problem_json_without_internals(
    intake: tuple[httpx.AsyncClient, IntakeSettings], content: bytes, content_type: str, status: int
) -> None:
    client, settings = intake

    response = await client.post("/v1/leads", content=content, headers={"Content-Type": content_type})

    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == status
    assert "Traceback" not in response.text
    assert await fetch_all(settings.database_url, "SELECT count(*) AS n FROM leads") == [{"n": 0}]


async def test_database_outage_answers_503_with_retry_after(kafka_bootstrap_servers: str, topic_prefix: str) -> None:
    unreachable = f"postgresql://nobody@127.0.0.1:{free_port()}/healingwork"
    settings = make_settings(
        IntakeSettings, unreachable, kafka_bootstrap_servers, topic_prefix, db_connect_timeout_s=1.0
    )
    # A well-formed key: checking it needs the database, which is down.
    key = "hw_0123456789ab_" + "k" * 43
    async with serve_intake(settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        lead = await client.post("/v1/leads", json=LEAD, headers={"Authorization": f"Bearer {key}"})
        health = await client.get("/readyz")

    assert lead.status_code == 503
    assert lead.headers["retry-after"].isdigit()
    assert lead.headers["content-type"].startswith("application/problem+json")
    assert health.status_code == 503


async def test_health_and_openapi_are_served(intake: tuple[httpx.AsyncClient, IntakeSettings]) -> None:
    client, _ = intake

    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/healthz")).status_code == 200
    openapi = (await client.get("/schema/openapi.json")).json()
    assert "/v1/leads" in openapi["paths"]


async def test_metrics_are_served_on_their_own_port_never_on_the_api_port(
    intake: tuple[httpx.AsyncClient, IntakeSettings],
) -> None:
    client, settings = intake
    await client.post("/v1/leads", json=LEAD)

    public = await client.get("/metrics")
    metrics = await client.get(f"http://127.0.0.1:{settings.health_port}/metrics")
    ready = await client.get(f"http://127.0.0.1:{settings.health_port}/readyz")

    assert public.status_code == 404
    assert metrics.status_code == 200
    assert 'healingwork_leads_total{outcome="accepted"}' in metrics.text
    assert ready.status_code == 200


async def test_with_openapi_disabled_no_schema_route_is_served(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with running_intake(
        migrated_database_url, kafka_bootstrap_servers, topic_prefix, openapi_enabled=False
    ) as intake:
        answers = [await intake.http.get(path) for path in ("/schema", "/schema/openapi.json", "/schema/swagger")]
        lead = await intake.http.post("/v1/leads", json=LEAD)

    assert [a.status_code for a in answers] == [404, 404, 404]
    assert lead.status_code == 202
