"""Signed requests (scheme v2) under attack, over real HTTP and PostgreSQL: each test performs the attack.

The canonical request binds method, path, query, body, timestamp, nonce, client and key id, so a
captured signature is good for its one request, once; the documented client snippets (Python and
shell/openssl) are run as they are shown in docs/security.md.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.signatures import canonical_request, request_signature
from services.intake.clients import legacy_signing_secret, signing_secret
from tests.support.intake import Intake, running_intake, sign
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"
OLD_KEY, NEW_KEY = secrets.token_hex(32), secrets.token_hex(32)


@pytest.fixture
async def intake(migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[Intake]:
    async with running_intake(
        migrated_database_url,
        kafka_bootstrap_servers,
        topic_prefix,
        # A rotation in progress: the new key is current, the old one still verifies.
        request_signing_keys=f"2026-11:{NEW_KEY},2026-05:{OLD_KEY}",
    ) as running:
        yield running


async def submit(intake: Intake, email: str) -> uuid.UUID:
    response = await intake.http.post(
        "/v1/leads", json={"email": email, "source": "website", "consent": {"marketing": True}}
    )
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


async def lead_ids(intake: Intake) -> set[object]:
    return {row["id"] for row in await fetch_all(intake.settings.database_url, "SELECT id FROM leads")}


async def test_a_signature_captured_for_reading_one_lead_cannot_erase_another(intake: Intake) -> None:
    a, b = await submit(intake, "a@example.com"), await submit(intake, "b@example.com")
    captured = sign(intake.settings, intake.client.id, b"", method="GET", path=f"/v1/leads/{a}")

    async with intake.anonymous() as client:
        erase = await client.delete(f"/v1/leads/{b}", headers=captured)
        erase_same_path = await client.delete(f"/v1/leads/{a}", headers=captured)
        read = await client.get(f"/v1/leads/{a}", headers=captured)

    assert (erase.status_code, erase_same_path.status_code) == (401, 401)
    assert "does not match the request" in erase.json()["detail"]
    assert read.status_code == 200  # the failed attempts did not spend the nonce of the real request
    assert await lead_ids(intake) == {a, b}


async def test_a_signed_query_cannot_be_changed(intake: Intake) -> None:
    await submit(intake, "keep@example.com")
    signed = sign(
        intake.settings, intake.client.id, b"", method="DELETE", path="/v1/leads", query="email=x@example.com"
    )

    async with intake.anonymous() as client:
        response = await client.delete("/v1/leads", params={"email": "keep@example.com"}, headers=signed)

    assert response.status_code == 401
    assert len(await lead_ids(intake)) == 1


async def test_a_replayed_nonce_is_refused(intake: Intake) -> None:
    body = json.dumps({"email": "ada@example.com", "source": "website", "consent": {"marketing": True}}).encode()
    headers = sign(intake.settings, intake.client.id, body)

    async with intake.anonymous() as client:
        first = await client.post("/v1/leads", content=body, headers=headers)
        replay = await client.post("/v1/leads", content=body, headers=headers)

    assert (first.status_code, replay.status_code) == (202, 401)
    assert "used before" in replay.json()["detail"]


async def test_two_bodiless_requests_in_the_same_second_both_succeed(intake: Intake) -> None:
    lead = await submit(intake, "ada@example.com")
    at = time.time()
    headers = [
        sign(intake.settings, intake.client.id, b"", at=at, method="GET", path=f"/v1/leads/{lead}") for _ in "ab"
    ]

    async with intake.anonymous() as client:
        answers = [await client.get(f"/v1/leads/{lead}", headers=h) for h in headers]

    assert [a.status_code for a in answers] == [200, 200]


@pytest.mark.parametrize("derivation", ["v2-from-hmac-secret", "v1-from-hmac-secret", "hmac-secret-itself"])
async def test_a_secret_derived_from_hmac_secret_does_not_verify(intake: Intake, derivation: str) -> None:
    client_id, hmac_secret = intake.client.id, intake.settings.hmac_secret
    secret = {
        "v2-from-hmac-secret": signing_secret(hmac_secret, client_id),
        "v1-from-hmac-secret": legacy_signing_secret(hmac_secret, client_id),
        "hmac-secret-itself": hmac_secret,
    }[derivation]
    timestamp, nonce = str(int(time.time())), uuid.uuid4().hex
    canonical = canonical_request(
        method="DELETE",
        path="/v1/leads",
        query="email=ada%40example.com",
        body=b"",
        timestamp=timestamp,
        nonce=nonce,
        client_id=str(client_id),
        key_id="2026-11",
    )
    forged = f"keyid=2026-11,t={timestamp},nonce={nonce},v2={request_signature(secret, canonical)}"
    await submit(intake, "ada@example.com")

    async with intake.anonymous() as client:
        response = await client.delete(
            "/v1/leads",
            params={"email": "ada@example.com"},
            headers={"X-Client-Id": str(client_id), "X-Signature": forged},
        )

    assert response.status_code == 401
    assert len(await lead_ids(intake)) == 1


async def test_the_old_scheme_is_refused_by_default(intake: Intake) -> None:
    async with intake.anonymous() as client:
        response = await client.get(
            "/v1/stats",
            headers={"X-Client-Id": str(intake.client.id), "X-Signature": f"t={int(time.time())},v1={'0' * 64}"},
        )

    assert response.status_code == 401
    assert "scheme is turned off" in response.json()["detail"]


@pytest.mark.parametrize("key_id", ["2026-11", "2026-05"])
async def test_during_a_rotation_the_old_and_the_new_key_both_verify(intake: Intake, key_id: str) -> None:
    headers = sign(intake.settings, intake.client.id, b"", method="GET", path="/v1/stats", key_id=key_id)

    async with intake.anonymous() as client:
        response = await client.get("/v1/stats", headers=headers)

    assert response.status_code == 200, response.text


async def test_the_query_is_signed_in_canonical_order(intake: Intake) -> None:
    headers = sign(
        intake.settings, intake.client.id, b"", method="GET", path="/v1/stats", query="to=2026-01-02&from=2026-01-01"
    )

    async with intake.anonymous() as client:
        response = await client.get("/v1/stats?from=2026-01-01&to=2026-01-02", headers=headers)

    assert response.status_code == 200, response.text


# --- the documented client snippets, run as shown ----------------------------------------------------


async def run(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


def client_args(intake: Intake) -> list[str]:
    client_id = intake.client.id
    return [intake.base_url, str(client_id), "2026-11", signing_secret(NEW_KEY, client_id)]


async def test_the_python_snippet_signs_requests_the_intake_accepts(intake: Intake) -> None:
    body = json.dumps({"email": "py@example.com", "source": "website", "consent": {"marketing": True}})
    snippet = str(EXAMPLES / "sign_request.py")

    created = await run(sys.executable, snippet, *client_args(intake), "POST", "/v1/leads", body)
    stats = await run(sys.executable, snippet, *client_args(intake), "GET", "/v1/stats?to=2026-01-02&from=2026-01-01")

    assert (created[0], created[1].split()[0]) == (0, "202"), created
    assert (stats[0], stats[1].split()[0]) == (0, "200"), stats


async def test_the_shell_snippet_signs_requests_the_intake_accepts(intake: Intake) -> None:
    lead = await submit(intake, "ada@example.com")
    snippet = str(EXAMPLES / "sign_request.sh")
    body = json.dumps({"email": "sh@example.com", "source": "website", "consent": {"marketing": True}})

    created = await run("sh", snippet, *client_args(intake), "POST", "/v1/leads", "", body)
    read = await run("sh", snippet, *client_args(intake), "GET", f"/v1/leads/{lead}")
    erased = await run("sh", snippet, *client_args(intake), "DELETE", "/v1/leads", "email=ada%40example.com")

    # The shell snippet prints the answer's body, then its status on a line of its own.
    assert (created[0], created[1].split()[-1]) == (0, "202"), created
    assert (read[0], read[1].split()[-1]) == (0, "200"), read
    assert (erased[0], erased[1].split()[-1]) == (0, "204"), erased
    assert lead not in await lead_ids(intake)


def test_docs_show_the_snippets_as_they_are_run() -> None:
    document = (Path(__file__).parents[2] / "docs" / "security.md").read_text()

    for name in ("sign_request.py", "sign_request.sh"):
        assert (EXAMPLES / name).read_text().rstrip("\n") in document
