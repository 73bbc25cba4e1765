"""Subscription bombing against the limiter, performed over real HTTP (issue 15, item 1).

The limiter charges a request once its caller is known: an authenticated client by its id, a public
form (and any failed authentication) by the client IP resolved through TRUSTED_PROXIES. Each test
performs one attack that worked before and shows its answer.
"""

from __future__ import annotations

import uuid

import pytest

from tests.support.intake import bearer, running_intake
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration

ORIGIN = "https://www.example.com"
UNKNOWN_KEY = "hw_0123456789ab_" + "x" * 43


def lead(email: str) -> dict[str, object]:
    return {"email": email, "source": "website", "consent": {"marketing": True}}


async def lead_count(database_url: str) -> int:
    [row] = await fetch_all(database_url, "SELECT count(*) AS n FROM leads")
    return int(row["n"])  # type: ignore[call-overload]


async def test_a_random_client_id_per_request_gets_no_fresh_bucket(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with (
        running_intake(
            migrated_database_url,
            kafka_bootstrap_servers,
            topic_prefix,
            public_form_origins=ORIGIN,
            form_rate_limit_per_minute=3,
            double_opt_in="off",
        ) as intake,
        intake.anonymous(headers={"Origin": ORIGIN}) as client,
    ):
        answers = [
            await client.post(
                "/v1/leads", json=lead(f"victim{i}@example.com"), headers={"X-Client-Id": str(uuid.uuid4())}
            )
            for i in range(20)
        ]

    statuses = [answer.status_code for answer in answers]
    assert statuses.count(202) == 3
    assert statuses[3:] == [429] * 17
    assert await lead_count(migrated_database_url) == 3


async def test_a_spoofed_forwarded_for_from_an_untrusted_peer_keeps_the_peers_bucket(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    # No trusted proxies: the test client's peer address (127.0.0.1) is the client, whatever it writes.
    async with (
        running_intake(
            migrated_database_url,
            kafka_bootstrap_servers,
            topic_prefix,
            public_form_origins=ORIGIN,
            form_rate_limit_per_minute=3,
            trusted_proxies="",
            double_opt_in="off",
        ) as intake,
        intake.anonymous(headers={"Origin": ORIGIN}) as client,
    ):
        answers = [
            await client.post(
                "/v1/leads", json=lead(f"p{i}@example.com"), headers={"X-Forwarded-For": f"198.51.100.{i + 1}"}
            )
            for i in range(6)
        ]

    assert [answer.status_code for answer in answers] == [202, 202, 202, 429, 429, 429]


async def test_a_flood_naming_a_client_does_not_exhaust_that_client(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with running_intake(
        migrated_database_url,
        kafka_bootstrap_servers,
        topic_prefix,
        public_form_origins=ORIGIN,
        rate_limit_per_minute=3,
        form_rate_limit_per_minute=3,
        double_opt_in="off",
    ) as intake:
        victim = str(intake.client.id)
        async with intake.anonymous() as attacker:
            forged = [
                await attacker.post(
                    "/v1/leads",
                    json=lead("x@example.com"),
                    headers={"X-Client-Id": victim, "X-Signature": f"t=1,v1={'0' * 64}"},
                )
                for _ in range(10)
            ]
            as_form = [
                await attacker.post(
                    "/v1/leads", json=lead(f"f{i}@example.com"), headers={"X-Client-Id": victim, "Origin": ORIGIN}
                )
                for i in range(6)
            ]
            wrong_key = [
                await attacker.post("/v1/leads", json=lead("y@example.com"), headers=bearer(UNKNOWN_KEY))
                for _ in range(5)
            ]
        legitimate = [
            await intake.http.post("/v1/leads", json=lead(f"real{i}@example.com"), headers={"X-Client-Id": victim})
            for i in range(3)
        ]

    assert {a.status_code for a in forged} == {401, 429}
    assert [a.status_code for a in as_form] == [202, 202, 202, 429, 429, 429]
    assert {a.status_code for a in wrong_key} == {429}  # the attacker's own IP budget is spent
    assert [a.status_code for a in legitimate] == [202, 202, 202]


async def test_an_authenticated_client_is_counted_by_its_id_not_by_the_headers_it_adds(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with running_intake(
        migrated_database_url, kafka_bootstrap_servers, topic_prefix, rate_limit_per_minute=2
    ) as intake:
        answers = [
            await intake.http.post(
                "/v1/leads", json=lead(f"c{i}@example.com"), headers={"X-Client-Id": str(uuid.uuid4())}
            )
            for i in range(3)
        ]

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert int(answers[2].headers["retry-after"]) >= 1


async def test_the_confirmation_link_is_limited_per_client_ip_under_the_form_limit(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with (
        running_intake(
            migrated_database_url, kafka_bootstrap_servers, topic_prefix, form_rate_limit_per_minute=3
        ) as intake,
        intake.anonymous() as guesser,
    ):
        # Guessing tokens costs the guesser's IP budget: 3 answers, then 429.
        answers = [await guesser.post(f"/confirm/guess-{i}") for i in range(5)]
        # The API client is not charged for it.
        own = await intake.http.post("/v1/leads", json=lead("api@example.com"))

    assert [answer.status_code for answer in answers] == [404, 404, 404, 429, 429]
    assert answers[3].headers["content-type"].startswith("application/problem+json")
    assert own.status_code == 202
