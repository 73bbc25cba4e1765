"""The deliverer records outcomes in groups (group commit): real PostgreSQL, a real HTTP receiver.

Which outcomes share a group depends on when attempts finish, so the pass-level tests make it certain:
a test connection holds the endpoint's row lock, the first group to reach it waits there, and every
other attempt finishes meanwhile (counted by the attempt-time histogram, observed right before each
outcome is submitted); once the lock is released they are one group. What a group records is checked
by calling :func:`record_outcomes` with a group directly.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import psycopg
import psycopg_pool
import pytest
from prometheus_client import REGISTRY
from psycopg.rows import TupleRow

from services.common.db import Connection, transaction
from services.outgoing_webhooks.deliverer import deliver_due
from services.outgoing_webhooks.delivery import Attempted, Claimed, Outcome, claim_due_deliveries, record_outcomes
from services.outgoing_webhooks.safe_http import SafeHttpClient
from tests.integration.test_outgoing_webhook_delivery import HMAC, deliveries, lead_accepted, queue, register, rules
from tests.support.platform import fetch_all, wait_until
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]

# Every update of an endpoint row, with the transaction that made it.
COUNT_ENDPOINT_UPDATES = """
    CREATE TABLE endpoint_updates (txid bigint NOT NULL);
    CREATE FUNCTION note_endpoint_update() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO endpoint_updates VALUES (txid_current()); RETURN NULL; END $$;
    CREATE TRIGGER note_endpoint_update AFTER UPDATE ON webhook_endpoints
        FOR EACH ROW EXECUTE FUNCTION note_endpoint_update();"""


def attempts_finished() -> float:
    """Webhook attempts this process finished: the deliverer submits each outcome right after counting it."""
    return REGISTRY.get_sample_value("healingwork_outgoing_webhook_seconds_count") or 0.0


async def until_attempts_finished(before: float, count: int) -> None:
    async def finished() -> bool:
        return attempts_finished() >= before + count

    await wait_until(finished, what=f"{count} webhook attempts finished")


async def lock_endpoint(database_url: str, endpoint: uuid.UUID) -> psycopg.AsyncConnection[TupleRow]:
    """A connection whose open transaction holds ``endpoint``'s row lock (until it ends)."""
    blocker = await psycopg.AsyncConnection.connect(database_url)
    await blocker.execute("SELECT 1 FROM webhook_endpoints WHERE id = %s FOR UPDATE", (endpoint,))
    return blocker


async def test_outcomes_finishing_together_share_one_transaction_and_one_endpoint_update(
    pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient, migrated_database_url: str
) -> None:
    endpoint, _ = await register(pool, receiver.url, ["lead.accepted"])
    async with pool.connection() as conn:
        await conn.execute(COUNT_ENDPOINT_UPDATES)
    await queue(pool, *(lead_accepted() for _ in range(20)))
    before = attempts_finished()

    blocker = await lock_endpoint(migrated_database_url, endpoint)
    async with blocker:
        passing = asyncio.create_task(deliver_due(pool, client, rules([60.0])))
        await until_attempts_finished(before, 20)
        await blocker.commit()  # the first group goes on; every other outcome is waiting for the next
    assert await passing == 20

    rows = await deliveries(pool, endpoint)
    assert [row["status"] for row in rows] == ["delivered"] * 20
    [written] = await fetch_all(
        migrated_database_url,
        "SELECT count(DISTINCT xmin::text) AS transactions FROM webhook_deliveries WHERE endpoint_id = %s",
        endpoint,
    )
    [updated] = await fetch_all(
        migrated_database_url, "SELECT count(*) AS rows, count(DISTINCT txid) AS transactions FROM endpoint_updates"
    )
    assert written["transactions"] in (1, 2)  # the group that waited for the lock, and the rest
    assert updated == {"rows": written["transactions"], "transactions": written["transactions"]}
    [row] = await fetch_all(
        migrated_database_url, "SELECT last_success_at FROM webhook_endpoints WHERE id = %s", endpoint
    )
    assert row["last_success_at"] is not None


async def claim_all(pool: Pool) -> dict[uuid.UUID, list[Claimed]]:
    """Claim every due delivery; by endpoint, in creation order."""
    async with transaction(pool) as conn:
        claimed = await claim_due_deliveries(conn, limit=100, lease_s=60.0, hmac_secrets=[HMAC])
    by_endpoint: dict[uuid.UUID, list[Claimed]] = {}
    for delivery in sorted(claimed, key=lambda d: d.created_at):
        by_endpoint.setdefault(delivery.endpoint_id, []).append(delivery)
    return by_endpoint


async def make_next_attempt_the_last(pool: Pool, endpoint: uuid.UUID) -> None:
    """With a one-delay schedule, the next claim of ``endpoint``'s deliveries is their last attempt."""
    async with transaction(pool) as conn:
        await conn.execute("UPDATE webhook_deliveries SET attempts = 1 WHERE endpoint_id = %s", (endpoint,))


async def test_a_mixed_group_records_each_outcome_in_one_transaction(pool: Pool, migrated_database_url: str) -> None:
    succeeding, _ = await register(pool, "http://127.0.0.1:9/ok", ["lead.accepted"])
    retrying, _ = await register(pool, "http://127.0.0.1:9/later", ["lead.accepted"])
    failing, _ = await register(pool, "http://127.0.0.1:9/gone", ["lead.accepted"])
    watcher, _ = await register(pool, "http://127.0.0.1:9/watch", ["webhook_endpoint.disabled"])
    await queue(pool, lead_accepted())
    await make_next_attempt_the_last(pool, failing)
    claimed = await claim_all(pool)
    group = [
        Attempted(claimed[succeeding][0], Outcome(status=200, body=b"thanks")),
        Attempted(claimed[retrying][0], Outcome(status=503, body=b"later", error="HTTP 503")),
        Attempted(claimed[failing][0], Outcome(error="connection refused")),
    ]

    async with transaction(pool) as conn:
        assert await record_outcomes(conn, group, schedule=[60.0]) == ["delivered", "retrying", "failed"]

    rows = await fetch_all(
        migrated_database_url,
        """SELECT endpoint_id, status, attempts, response_status, response_body, last_error, xmin::text AS tx,
                  extract(epoch FROM next_attempt_at - last_attempt_at) AS wait_s
           FROM webhook_deliveries WHERE event_type = 'lead.accepted'""",
    )
    by_endpoint = {row["endpoint_id"]: row for row in rows}
    assert [by_endpoint[e]["status"] for e in (succeeding, retrying, failing)] == ["delivered", "pending", "failed"]
    assert (by_endpoint[succeeding]["response_status"], by_endpoint[succeeding]["response_body"]) == (200, "thanks")
    assert (by_endpoint[retrying]["response_status"], by_endpoint[retrying]["last_error"]) == (503, "HTTP 503")
    assert 60 <= float(by_endpoint[retrying]["wait_s"]) <= 66  # type: ignore[arg-type]  # plus at most 10 % jitter
    assert (by_endpoint[failing]["response_status"], by_endpoint[failing]["last_error"]) == (None, "connection refused")
    assert len({row["tx"] for row in rows}) == 1
    endpoints = {
        row["id"]: row
        for row in await fetch_all(migrated_database_url, "SELECT id, status, last_success_at FROM webhook_endpoints")
    }
    assert endpoints[succeeding]["last_success_at"] is not None
    assert endpoints[retrying]["last_success_at"] is None
    assert [endpoints[e]["status"] for e in (succeeding, retrying, failing)] == ["enabled", "enabled", "disabled"]
    [announcement] = await deliveries(pool, watcher)
    assert announcement["event_type"] == "webhook_endpoint.disabled"


async def test_a_success_in_the_same_group_keeps_a_finally_failing_endpoint_enabled(
    pool: Pool, migrated_database_url: str
) -> None:
    endpoint, _ = await register(pool, "http://127.0.0.1:9/flaky", ["lead.accepted"])
    await queue(pool, lead_accepted(), lead_accepted())
    await make_next_attempt_the_last(pool, endpoint)
    failed, landed = (await claim_all(pool))[endpoint]
    # The failure comes first in the group; the success still counts before it.
    group = [Attempted(failed, Outcome(status=500, error="HTTP 500")), Attempted(landed, Outcome(status=204))]

    async with transaction(pool) as conn:
        assert await record_outcomes(conn, group, schedule=[60.0]) == ["failed", "delivered"]

    [row] = await fetch_all(
        migrated_database_url, "SELECT status, last_success_at FROM webhook_endpoints WHERE id = %s", endpoint
    )
    assert row["status"] == "enabled"
    assert row["last_success_at"] is not None
    assert sorted(str(d["status"]) for d in await deliveries(pool, endpoint)) == ["delivered", "failed"]


async def test_a_group_the_database_drops_is_attempted_again_after_the_lease(
    pool: Pool,
    receiver: WebhookReceiver,
    client: SafeHttpClient,
    migrated_database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint, secret = await register(pool, receiver.url, ["lead.accepted"])
    await queue(pool, lead_accepted(), lead_accepted(), lead_accepted())
    before = attempts_finished()

    blocker = await lock_endpoint(migrated_database_url, endpoint)
    async with blocker:
        with caplog.at_level(logging.WARNING, logger="services.outgoing_webhooks.deliverer"):
            passing = asyncio.create_task(deliver_due(pool, client, rules([60.0])))
            await until_attempts_finished(before, 3)
            while not passing.done():  # the database drops every group's connection mid-transaction
                await blocker.execute(
                    """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event_type = 'Lock'"""
                )
                await asyncio.wait([passing], timeout=0.1)
            assert passing.result() == 3
        await blocker.rollback()

    unrecorded = [r for r in caplog.records if r.getMessage() == "could not record a webhook attempt"]
    assert len(unrecorded) == 3
    rows = await deliveries(pool, endpoint)
    assert [(r["status"], r["attempts"], r["response_status"]) for r in rows] == [("pending", 1, None)] * 3
    async with transaction(pool) as conn:  # the lease runs out
        await conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now()")
    assert await deliver_due(pool, client, rules([60.0])) == 3

    rows = await deliveries(pool, endpoint)
    assert [(r["status"], r["attempts"]) for r in rows] == [("delivered", 2)] * 3
    assert len(receiver.verified(secret)) == 6
    assert sorted(r.headers["webhook-id"] for r in receiver.received) == sorted(2 * [str(r["id"]) for r in rows])
