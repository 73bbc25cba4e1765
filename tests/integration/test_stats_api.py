"""GET /v1/stats over real HTTP (uvicorn) on a real PostgreSQL: rollups, totals and derived rates;
bad query parameters are a 422 naming the parameter; an unknown Sequence is a 404."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from proto.stats import Counts, Rates
from services.common.daily_stats import derive_rates
from services.common.db import transaction
from tests.support.intake import running_intake
from tests.support.jobs import job_context, job_settings
from tests.support.platform import apply_examples

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    await apply_examples(migrated_database_url)
    async with job_context(job_settings(migrated_database_url)) as ctx, transaction(ctx.pool) as conn:
        await conn.execute(
            """INSERT INTO daily_stats (day, sequence_id, revision, step_position, leads_accepted, enrolled, sent,
                                        failed, dead, unique_opens, unique_clicks, unsubscribes, bounces, complaints)
               SELECT d::date, id, 1, step, CASE WHEN step = 0 THEN 10 ELSE 0 END,
                      CASE WHEN step = 0 THEN 10 ELSE 0 END, 10, 1, 0, 4, 2, 1, 2, 0
               FROM sequences, (VALUES ('2026-01-10'), ('2026-01-11')) AS days (d), (VALUES (0), (1)) AS steps (step)"""
        )
    async with running_intake(
        migrated_database_url, kafka_bootstrap_servers, topic_prefix, scopes=["leads:read"]
    ) as intake:
        yield intake.http


async def test_stats_need_the_read_scope(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async with running_intake(
        migrated_database_url, kafka_bootstrap_servers, topic_prefix, scopes=["leads:write"]
    ) as intake:
        writer = await intake.http.get("/v1/stats")
        async with intake.anonymous() as anonymous:
            nobody = await anonymous.get("/v1/stats")

    assert (writer.status_code, nobody.status_code) == (403, 401)


async def test_stats_of_a_sequence_have_rows_totals_and_rates(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/v1/stats", params={"sequence": "default/welcome", "from": "2026-01-11", "to": "2026-01-31"}
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["from"], body["to"]) == ("2026-01-11", "2026-01-31")
    [welcome] = body["sequences"]
    assert (welcome["namespace"], welcome["name"]) == ("default", "welcome")
    assert [(row["day"], row["step"], row["step_name"]) for row in welcome["rows"]] == [
        ("2026-01-11", 0, "hello"),
        ("2026-01-11", 1, "day-2"),
    ]
    assert welcome["totals"]["sent"] == 20
    assert welcome["totals"]["leads_accepted"] == 10  # entry counters live on step 0 only
    # 20 sent, 4 bounced: 16 delivered; 8 unique opens, 4 clicks, 2 unsubscribes.
    assert welcome["rates"] == {"delivery": 0.8, "open": 0.5, "click": 0.25, "unsubscribe": 0.125, "bounce": 0.2}


async def test_stats_without_a_sequence_cover_every_sequence_and_default_to_recent_days(
    client: httpx.AsyncClient,
) -> None:
    everything = await client.get("/v1/stats", params={"from": "2026-01-01", "to": "2026-01-31"})
    recent = await client.get("/v1/stats")

    # Every example Sequence has rows on 2 days x steps 0 and 1 (the fixture writes them for each).
    sequences = everything.json()["sequences"]
    assert [s["name"] for s in sequences] == ["re-engagement", "webinar-follow-up", "welcome", "welcome-ab"]
    assert [len(s["rows"]) for s in sequences] == [4, 4, 4, 4]
    assert recent.status_code == 200
    assert recent.json()["sequences"] == []  # the fixture's days are long past the default 30 days


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-02-30"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-02-01", "to": "2026-01-01"}, "from"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "from"),
        ({"sequence": "a/b/c"}, "sequence"),
        ({"sequence": "wel\x00come"}, "sequence"),
        ({"sequence": "Welcome Series"}, "sequence"),
        # Date arithmetic at the ends of the calendar overflowed into a 500 before.
        ({"to": "0001-01-05"}, "to"),
        ({"from": "0001-01-01", "to": "2026-01-02"}, "from"),
        ({"to": "9999-12-31"}, "to"),
    ],
)
async def test_invalid_query_is_a_422_naming_the_parameter(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await client.get("/v1/stats", params=params)

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [error["field"] for error in response.json()["errors"]] == [field]


async def test_unknown_sequence_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/stats", params={"sequence": "marketing/welcome"})

    assert response.status_code == 404
    assert response.json()["detail"] == "No Sequence marketing/welcome."


def test_rates_without_a_denominator_are_null_not_zero() -> None:
    assert derive_rates(Counts()) == Rates(delivery=None, open=None, click=None, unsubscribe=None, bounce=None)
    assert derive_rates(Counts(sent=4, dead=1, bounces=4)).open is None  # nothing delivered
