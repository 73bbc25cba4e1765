"""Authentication, scopes, public forms and rate limits of the intake API, over real HTTP and PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from services.common.config import DatabaseSettings
from services.common.db import connect
from services.intake.clients import revoke_client
from tests.support.intake import Intake, bearer, create_api_client, running_intake, sign
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration

LEAD = {"email": "ada@example.com", "source": "website", "consent": {"marketing": True}}
ORIGIN = "https://www.example.com"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


@pytest.fixture
async def intake(migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[Intake]:
    async with running_intake(
        migrated_database_url,
        kafka_bootstrap_servers,
        topic_prefix,
        public_form_origins=f"{ORIGIN}, https://forms.example.org",
        form_rate_limit_per_minute=3,
        rate_limit_per_minute=1000,
        trusted_proxies="127.0.0.1/32",
    ) as running:
        yield running


async def lead_count(intake: Intake) -> int:
    [row] = await fetch_all(intake.settings.database_url, "SELECT count(*) AS n FROM leads")
    return int(row["n"])  # type: ignore[call-overload]


# --- API keys ------------------------------------------------------------------------------------


async def test_request_without_credentials_gets_401_with_a_challenge(intake: Intake) -> None:
    async with intake.anonymous() as client:
        response = await client.post("/v1/leads", json=LEAD)

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert await lead_count(intake) == 0


@pytest.mark.parametrize("key", ["hw_0123456789ab_" + "x" * 43, "not-a-key", "hw_short"])
async def test_unknown_or_malformed_api_key_gets_401(intake: Intake, key: str) -> None:
    async with intake.anonymous() as client:
        response = await client.post("/v1/leads", json=LEAD, headers=bearer(key))

    assert response.status_code == 401
    assert await lead_count(intake) == 0


async def test_api_key_is_accepted_in_either_header_and_recorded_on_the_lead(intake: Intake) -> None:
    async with intake.anonymous() as client:
        first = await client.post("/v1/leads", json=LEAD, headers={"X-API-Key": intake.key})
        second = await client.post("/v1/leads", json={**LEAD, "email": "bo@example.com"}, headers=bearer(intake.key))

    assert (first.status_code, second.status_code) == (202, 202)
    rows = await fetch_all(intake.settings.database_url, "SELECT DISTINCT client_id FROM leads")
    assert rows == [{"client_id": intake.client.id}]


async def test_only_the_hash_of_a_key_is_stored(intake: Intake) -> None:
    rows = await fetch_all(intake.settings.database_url, "SELECT * FROM api_clients")

    assert intake.key not in json.dumps(rows, default=str)


async def test_revoked_key_is_refused_at_once(intake: Intake) -> None:
    conn = await connect(DatabaseSettings(database_url=intake.settings.database_url))
    async with conn:
        assert await revoke_client(conn, intake.client.name)

    response = await intake.http.post("/v1/leads", json=LEAD)

    assert response.status_code == 401


async def test_missing_scope_gets_403(intake: Intake) -> None:
    _, writer = await create_api_client(intake.settings.database_url, "writer", ["leads:write"])
    _, reader = await create_api_client(intake.settings.database_url, "reader", ["leads:read"])
    async with intake.anonymous() as client:
        created = await client.post("/v1/leads", json=LEAD, headers=bearer(writer))
        lead_id = created.json()["id"]
        read_by_writer = await client.get(f"/v1/leads/{lead_id}", headers=bearer(writer))
        write_by_reader = await client.post(
            "/v1/leads", json={**LEAD, "email": "x@example.com"}, headers=bearer(reader)
        )
        erase_by_reader = await client.delete(f"/v1/leads/{lead_id}", headers=bearer(reader))
        read_by_reader = await client.get(f"/v1/leads/{lead_id}", headers=bearer(reader))

    assert created.status_code == 202
    assert [read_by_writer.status_code, write_by_reader.status_code, erase_by_reader.status_code] == [403, 403, 403]
    assert "leads:read" in read_by_writer.json()["detail"]
    assert read_by_reader.status_code == 200
    assert await lead_count(intake) == 1


async def test_admin_scope_holds_every_scope(intake: Intake) -> None:
    _, admin = await create_api_client(intake.settings.database_url, "ops", ["admin"])
    async with intake.anonymous(headers=bearer(admin)) as client:
        created = await client.post("/v1/leads", json=LEAD)
        read = await client.get(f"/v1/leads/{created.json()['id']}")

    assert (created.status_code, read.status_code) == (202, 200)


# --- signed requests -----------------------------------------------------------------------------


async def test_signed_request_is_accepted_once_and_a_replay_is_refused(intake: Intake) -> None:
    body = json.dumps(LEAD).encode()
    headers = sign(intake.settings, intake.client.id, body)
    async with intake.anonymous() as client:
        first = await client.post("/v1/leads", content=body, headers=headers)
        replay = await client.post("/v1/leads", content=body, headers=headers)

    assert first.status_code == 202
    assert replay.status_code == 401
    assert "used before" in replay.json()["detail"]
    assert await lead_count(intake) == 1


@pytest.mark.parametrize(
    "tamper",
    ["body", "timestamp-too-old", "timestamp-in-future", "other-client", "garbled", "no-client-id"],
)
async def test_bad_signatures_are_refused(intake: Intake, tamper: str) -> None:
    body = json.dumps(LEAD).encode()
    at = time.time()
    if tamper == "timestamp-too-old":
        at -= intake.settings.signature_tolerance_s + 5
    elif tamper == "timestamp-in-future":
        at += intake.settings.signature_tolerance_s + 5
    headers = sign(intake.settings, intake.client.id, body, at=at)
    if tamper == "body":
        body = json.dumps({**LEAD, "email": "eve@example.com"}).encode()
    elif tamper == "other-client":
        other, _ = await create_api_client(intake.settings.database_url, "other", ["leads:write"])
        headers["X-Client-Id"] = str(other.id)
    elif tamper == "garbled":
        headers["X-Signature"] = "v1=deadbeef"
    elif tamper == "no-client-id":
        del headers["X-Client-Id"]

    async with intake.anonymous() as client:
        response = await client.post("/v1/leads", content=body, headers=headers)

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await lead_count(intake) == 0


async def test_signature_of_a_revoked_client_is_refused(intake: Intake) -> None:
    conn = await connect(DatabaseSettings(database_url=intake.settings.database_url))
    async with conn:
        await revoke_client(conn, intake.client.name)
    body = json.dumps(LEAD).encode()

    async with intake.anonymous() as client:
        response = await client.post("/v1/leads", content=body, headers=sign(intake.settings, intake.client.id, body))

    assert response.status_code == 401


# --- public forms --------------------------------------------------------------------------------


async def test_public_form_from_an_allowed_origin_is_accepted_with_cors(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": ORIGIN, "User-Agent": "Mozilla/5.0 (Form)"}) as client:
        preflight = await client.options("/v1/leads", headers=PREFLIGHT)
        response = await client.post("/v1/leads", json={**LEAD, "website_url": ""})

    assert preflight.status_code in (200, 204)
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert response.status_code == 202
    assert response.headers["access-control-allow-origin"] == ORIGIN
    rows = await fetch_all(intake.settings.database_url, "SELECT client_id, consent_user_agent FROM leads")
    assert rows == [{"client_id": None, "consent_user_agent": "Mozilla/5.0 (Form)"}]


async def test_public_form_from_another_origin_is_refused(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": "https://evil.example.net"}) as client:
        preflight = await client.options("/v1/leads", headers=PREFLIGHT)
        response = await client.post("/v1/leads", json=LEAD)

    assert "access-control-allow-origin" not in preflight.headers
    assert response.status_code == 401
    assert await lead_count(intake) == 0


async def test_public_form_cannot_read_or_erase(intake: Intake) -> None:
    created = await intake.http.post("/v1/leads", json=LEAD)
    async with intake.anonymous(headers={"Origin": ORIGIN}) as client:
        read = await client.get(f"/v1/leads/{created.json()['id']}")
        erase = await client.delete(f"/v1/leads/{created.json()['id']}")

    assert (read.status_code, erase.status_code) == (403, 403)


async def test_filled_honeypot_looks_accepted_but_stores_nothing(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": ORIGIN}) as client:
        response = await client.post("/v1/leads", json={**LEAD, "website_url": "http://spam.example"})

    assert response.status_code == 202
    assert response.json() == {"status": "received"}  # the answer of every public-form submission
    assert await lead_count(intake) == 0
    assert await fetch_all(intake.settings.database_url, "SELECT count(*) AS n FROM outbox") == [{"n": 0}]


async def test_honeypot_field_is_an_unknown_field_for_api_clients(intake: Intake) -> None:
    response = await intake.http.post("/v1/leads", json={**LEAD, "website_url": ""})

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["/website_url"]


# --- rate limits and client IPs ------------------------------------------------------------------


async def test_public_forms_are_limited_per_client_ip_with_retry_after(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": ORIGIN}) as client:
        answers = [
            await client.post(
                "/v1/leads", json={**LEAD, "email": f"p{i}@example.com"}, headers={"X-Forwarded-For": "203.0.113.7"}
            )
            for i in range(4)
        ]
        other_ip = await client.post(
            "/v1/leads", json={**LEAD, "email": "q@example.com"}, headers={"X-Forwarded-For": "203.0.113.8"}
        )
    # An API client is counted separately, by its key, with its own (higher) limit.
    with_key = await intake.http.post("/v1/leads", json={**LEAD, "email": "k@example.com"})

    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    limited = answers[3]
    assert limited.headers["content-type"].startswith("application/problem+json")
    assert int(limited.headers["retry-after"]) >= 1
    assert other_ip.status_code == 202
    assert with_key.status_code == 202
    assert await lead_count(intake) == 5


async def test_api_clients_are_limited_per_key(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with running_intake(
        migrated_database_url, kafka_bootstrap_servers, topic_prefix, rate_limit_per_minute=2
    ) as intake:
        _, other = await create_api_client(migrated_database_url, "other", ["leads:write"])
        mine = [(await intake.http.post("/v1/leads", json={**LEAD, "email": f"m{i}@example.com"})) for i in range(3)]
        async with intake.anonymous(headers=bearer(other)) as client:
            theirs = await client.post("/v1/leads", json={**LEAD, "email": "t@example.com"})
        health = [(await intake.http.get("/healthz")).status_code for _ in range(3)]

    assert [r.status_code for r in mine] == [202, 202, 429]
    assert mine[2].headers["retry-after"].isdigit()
    assert theirs.status_code == 202
    assert health == [200, 200, 200]


async def test_client_ip_comes_from_trusted_proxies_only(intake: Intake) -> None:
    # The test client connects from 127.0.0.1, which this intake trusts as a proxy: the right-most
    # untrusted X-Forwarded-For address is the client; what the client wrote further left is ignored.
    await intake.http.post("/v1/leads", json=LEAD, headers={"X-Forwarded-For": "10.9.9.9, 198.51.100.4, 127.0.0.1"})

    rows = await fetch_all(intake.settings.database_url, "SELECT host(consent_ip) AS ip FROM leads")
    assert rows == [{"ip": "198.51.100.4"}]


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix) as intake:
        await intake.http.post("/v1/leads", json=LEAD, headers={"X-Forwarded-For": "198.51.100.4"})

    rows = await fetch_all(migrated_database_url, "SELECT host(consent_ip) AS ip FROM leads")
    assert rows == [{"ip": "127.0.0.1"}]


async def test_auth_disabled_lets_anyone_call_everything(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with (
        running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix, auth_mode="disabled") as intake,
        intake.anonymous() as client,
    ):
        created = await client.post("/v1/leads", json=LEAD)
        read = await client.get(f"/v1/leads/{created.json()['id']}")
        erased = await client.delete(f"/v1/leads/{created.json()['id']}")

    assert [created.status_code, read.status_code, erased.status_code] == [202, 200, 204]


async def test_form_limit_applies_only_to_form_submissions(intake: Intake) -> None:
    async with intake.anonymous(headers={"Origin": ORIGIN}) as client:
        reads = [(await client.get(f"/v1/leads/{uuid.uuid4()}")).status_code for _ in range(5)]

    assert reads == [403] * 5  # a public form may not read; and reading is not a form submission
