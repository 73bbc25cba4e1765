"""Outgoing webhooks delivered: real PostgreSQL, a real HTTP receiver, signatures verified with the
independent ``standardwebhooks`` package. The deliverer's passes are driven one at a time
(:func:`deliver_due`), so retries are checked without sleeping; a zero-second schedule makes the next
attempt due at once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg_pool
import pytest

from proto.http import WebhookEndpointRequest
from services.common.db import Connection, transaction
from services.common.webhook_events import WebhookEvent
from services.intake.webhook_endpoints import register_endpoint
from services.outgoing_webhooks.deliverer import DeliveryRules, deliver_due
from services.outgoing_webhooks.fanout import fan_out
from services.outgoing_webhooks.safe_http import SafeHttpClient
from tests.support.platform import fetch_all
from tests.support.webhook_receiver import Answer, WebhookReceiver

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]
HMAC = "webhook-tests-" + uuid.uuid4().hex + uuid.uuid4().hex


def rules(schedule: list[float]) -> DeliveryRules:
    return DeliveryRules(batch_size=50, lease_s=60.0, schedule=schedule, hmac_secrets=[HMAC])


async def register(pool: Pool, url: str, events: list[str]) -> tuple[uuid.UUID, str]:
    async with transaction(pool) as conn:
        created = await register_endpoint(
            conn,
            WebhookEndpointRequest(url=url, events=events),  # type: ignore[arg-type]
            hmac_secret=HMAC,
            allow_private_networks=True,
        )
    return created.id, created.secret


def lead_accepted(lead: uuid.UUID | None = None) -> WebhookEvent:
    return WebhookEvent(
        id=uuid.uuid4(),
        type="lead.accepted",
        occurred_at=datetime(2026, 11, 30, 4, 30, tzinfo=UTC),
        data={"lead_id": str(lead or uuid.uuid4()), "source": "website", "tags": []},
    )


async def queue(pool: Pool, *events: WebhookEvent) -> int:
    async with transaction(pool) as conn:
        return await fan_out(conn, events)


async def deliveries(pool: Pool, endpoint: uuid.UUID) -> list[dict[str, object]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT * FROM webhook_deliveries WHERE endpoint_id = %s ORDER BY created_at", (endpoint,)
        )
        return list(await cursor.fetchall())


async def test_event_is_delivered_signed_per_standard_webhooks(
    pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    endpoint, secret = await register(pool, receiver.url + "/hooks?tenant=7", ["lead.accepted"])
    lead = uuid.uuid4()
    event = lead_accepted(lead)
    assert await queue(pool, event) == 1
    assert await deliver_due(pool, client, rules([5.0])) == 1

    [request] = receiver.received
    assert request.path == "/hooks?tenant=7"
    assert request.headers["content-type"] == "application/json"
    [payload] = receiver.verified(secret)
    assert payload == {
        "type": "lead.accepted",
        "timestamp": "2026-11-30T04:30:00.000Z",
        "data": {"lead_id": str(lead), "source": "website", "tags": []},
    }
    [row] = await deliveries(pool, endpoint)
    assert request.headers["webhook-id"] == str(row["id"])
    assert (row["status"], row["attempts"], row["response_status"], row["response_body"]) == ("delivered", 1, 200, "ok")


async def test_an_event_fanned_out_twice_is_delivered_once(
    pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    await register(pool, receiver.url, ["lead.accepted"])
    event = lead_accepted()
    assert await queue(pool, event) == 1
    assert await queue(pool, event) == 0  # a Kafka redelivery
    await deliver_due(pool, client, rules([0.0]))
    assert await deliver_due(pool, client, rules([0.0])) == 0
    assert len(receiver.received) == 1


async def test_only_subscribed_enabled_endpoints_get_the_event(pool: Pool, receiver: WebhookReceiver) -> None:
    subscribed, _ = await register(pool, receiver.url + "/a", ["lead.accepted", "email.sent"])
    other, _ = await register(pool, receiver.url + "/b", ["email.sent"])
    disabled, _ = await register(pool, receiver.url + "/c", ["lead.accepted"])
    async with transaction(pool) as conn:
        await conn.execute("UPDATE webhook_endpoints SET status = 'disabled' WHERE id = %s", (disabled,))
    assert await queue(pool, lead_accepted()) == 1
    assert [len(await deliveries(pool, e)) for e in (subscribed, other, disabled)] == [1, 0, 0]


async def test_a_failed_attempt_is_retried_with_the_same_webhook_id_and_a_fresh_signature(
    pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    endpoint, secret = await register(pool, receiver.url, ["lead.accepted"])
    receiver.answers.extend([Answer(status=503, body=b"try later"), Answer(status=500)])
    await queue(pool, lead_accepted())
    for _ in range(3):
        await deliver_due(pool, client, rules([0.0, 0.0, 0.0]))

    assert len(receiver.received) == 3
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    assert len({r.body for r in receiver.received}) == 1
    assert len(receiver.verified(secret)) == 3
    [row] = await deliveries(pool, endpoint)
    assert (row["status"], row["attempts"], row["response_status"]) == ("delivered", 3, 200)


async def test_the_next_attempt_waits_for_the_schedule(
    pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    endpoint, _ = await register(pool, receiver.url, ["lead.accepted"])
    receiver.default = Answer(status=500, body=b"down")
    await queue(pool, lead_accepted())
    await deliver_due(pool, client, rules([3600.0]))
    assert await deliver_due(pool, client, rules([3600.0])) == 0  # not due for an hour
    [row] = await deliveries(pool, endpoint)
    assert row["status"] == "pending"
    assert (row["response_status"], row["response_body"], row["last_error"]) == (500, "down", "HTTP 500")
    [wait] = await fetch_all(
        pool_url(pool),
        "SELECT extract(epoch FROM next_attempt_at - last_attempt_at) AS s FROM webhook_deliveries WHERE id = %s",
        row["id"],
    )
    assert 3600 <= float(wait["s"]) <= 3960  # type: ignore[arg-type]  # the delay plus at most 10 % jitter


def pool_url(pool: Pool) -> str:
    return str(pool.conninfo)


async def test_persistent_failure_disables_the_endpoint_and_announces_it(
    pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    failing, _ = await register(pool, receiver.url + "/failing", ["lead.accepted", "webhook_endpoint.disabled"])
    _, watcher_secret = await register(pool, receiver.url + "/watcher", ["webhook_endpoint.disabled"])
    receiver.default = Answer(status=500)
    await queue(pool, lead_accepted(), lead_accepted())
    receiver.default = Answer(status=500)
    for _ in range(3):  # one attempt and two retries for each of the two deliveries
        await deliver_due(pool, client, rules([0.0, 0.0]))
    assert {r.path for r in receiver.received} == {"/failing"}
    assert len(receiver.received) == 6

    [endpoint] = await fetch_all(pool_url(pool), "SELECT * FROM webhook_endpoints WHERE id = %s", failing)
    assert endpoint["status"] == "disabled"
    assert "every delivery failed since" in str(endpoint["disabled_reason"])
    assert {row["status"] for row in await deliveries(pool, failing)} == {"failed"}

    receiver.default = Answer(status=204, body=b"")
    await deliver_due(pool, client, rules([0.0, 0.0]))
    announcements = [r for r in receiver.received if r.path == "/watcher"]
    assert len(announcements) == 1
    receiver.received[:] = announcements
    [payload] = receiver.verified(watcher_secret)
    assert payload["type"] == "webhook_endpoint.disabled"
    assert payload["data"]["endpoint_id"] == str(failing)  # type: ignore[index]
    assert await deliver_due(pool, client, rules([0.0])) == 0  # nothing is sent to a disabled endpoint


async def test_a_success_in_between_keeps_the_endpoint_enabled(
    pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    endpoint, _ = await register(pool, receiver.url, ["lead.accepted"])
    await queue(pool, lead_accepted())
    receiver.default = Answer(status=500)
    await deliver_due(pool, client, rules([0.0]))  # the first delivery fails once ...
    async with transaction(pool) as conn:
        await conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() + interval '1 hour'")
    await queue(pool, lead_accepted())
    receiver.default = Answer(status=200)
    await deliver_due(pool, client, rules([0.0]))  # ... a later one lands ...
    async with transaction(pool) as conn:
        await conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE status = 'pending'")
    receiver.default = Answer(status=500)
    await deliver_due(pool, client, rules([0.0]))  # ... and the first fails for good
    [row] = await fetch_all(pool_url(pool), "SELECT status FROM webhook_endpoints WHERE id = %s", endpoint)
    statuses = sorted(str(d["status"]) for d in await deliveries(pool, endpoint))
    assert statuses == ["delivered", "failed"]
    assert row["status"] == "enabled"


async def test_a_claimed_attempt_that_never_finished_is_attempted_again_after_its_lease(
    pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    endpoint, secret = await register(pool, receiver.url, ["lead.accepted"])
    await queue(pool, lead_accepted())
    from services.outgoing_webhooks.delivery import claim_due_deliveries

    async with transaction(pool) as conn:  # a deliverer claims it, then dies before sending
        [claimed] = await claim_due_deliveries(conn, limit=10, lease_s=60.0, hmac_secrets=[HMAC])
    assert await deliver_due(pool, client, rules([0.0])) == 0  # leased to the dead deliverer
    async with transaction(pool) as conn:  # the lease runs out
        await conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = %s", (claimed.id,))
    assert await deliver_due(pool, client, rules([0.0])) == 1
    [request] = receiver.received
    assert request.headers["webhook-id"] == str(claimed.id)
    assert len(receiver.verified(secret)) == 1
    [row] = await deliveries(pool, endpoint)
    assert (row["status"], row["attempts"]) == ("delivered", 2)


async def test_after_a_rotation_secrets_are_encrypted_again_under_the_new_hmac_secret(
    pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    from services.outgoing_webhooks.delivery import reencrypt_secrets

    endpoint, secret = await register(pool, receiver.url, ["lead.accepted"])
    rotated = "rotated-" + uuid.uuid4().hex + uuid.uuid4().hex
    async with transaction(pool) as conn:
        assert await reencrypt_secrets(conn, hmac_secret=rotated, hmac_secret_previous=HMAC) == 1
        assert await reencrypt_secrets(conn, hmac_secret=rotated, hmac_secret_previous=HMAC) == 0
    await queue(pool, lead_accepted())
    only_new_key = DeliveryRules(batch_size=10, lease_s=60.0, schedule=[0.0], hmac_secrets=[rotated])
    assert await deliver_due(pool, client, only_new_key) == 1
    assert len(receiver.verified(secret)) == 1
    [row] = await deliveries(pool, endpoint)
    assert row["status"] == "delivered"


async def test_a_secret_no_key_decrypts_fails_the_attempt_without_sending(
    pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    endpoint, _ = await register(pool, receiver.url, ["lead.accepted"])
    await queue(pool, lead_accepted())
    wrong_key = DeliveryRules(batch_size=10, lease_s=60.0, schedule=[60.0], hmac_secrets=["x" * 40])
    assert await deliver_due(pool, client, wrong_key) == 1
    assert receiver.received == []
    [row] = await deliveries(pool, endpoint)
    assert row["status"] == "pending"
    assert "no configured HMAC_SECRET decrypts" in str(row["last_error"])


async def test_reconcile_fans_out_published_events_a_broker_lost_once_and_never_history(pool: Pool) -> None:
    from proto.codec import encode_message
    from proto.messages import LeadAccepted
    from services.common.clock import utcnow
    from services.outgoing_webhooks.reconcile import refan_published_events

    before = utcnow()
    endpoint, _ = await register(pool, "http://127.0.0.1:9/hook", ["lead.accepted"])
    older = LeadAccepted(id=uuid.uuid4(), occurred_at=before, lead_id=uuid.uuid4(), source="web")
    lost = LeadAccepted(id=uuid.uuid4(), occurred_at=utcnow(), lead_id=uuid.uuid4(), source="web")
    async with transaction(pool) as conn:
        # Published (the relay marked them), then lost with the broker's memory before anyone consumed them.
        for message in (older, lost):
            await conn.execute(
                "INSERT INTO outbox (topic, key, payload, published_at) VALUES ('t.leads.accepted', 'k', %s, now())",
                (encode_message(message),),
            )
        await conn.execute(
            "INSERT INTO outbox (topic, key, payload, published_at) VALUES ('t.other', 'k', %s, now())",
            (encode_message(LeadAccepted(id=uuid.uuid4(), occurred_at=utcnow(), lead_id=uuid.uuid4(), source="x")),),
        )
    window = {"since": before - timedelta(minutes=1), "until": utcnow() + timedelta(minutes=1), "limit": 100}
    async with transaction(pool) as conn:
        first = await refan_published_events(conn, ["t.leads.accepted"], **window)  # type: ignore[arg-type]
        again = await refan_published_events(conn, ["t.leads.accepted"], **window)  # type: ignore[arg-type]
    assert (first.rows, first.new_deliveries) == (2, 1)
    assert again.new_deliveries == 0
    [row] = await deliveries(pool, endpoint)
    assert row["event_id"] == lost.id  # the same id the consumer would have fanned out: one webhook-id


async def test_reconcile_reads_a_row_committed_behind_its_fresh_window_once_the_lag_has_passed(pool: Pool) -> None:
    from proto.codec import encode_message
    from proto.messages import LeadAccepted
    from services.common.clock import database_now, utcnow
    from services.outgoing_webhooks.reconcile import Windows

    endpoint, _ = await register(pool, "http://127.0.0.1:9/hook", ["lead.accepted"])
    windows = Windows(lag=timedelta(seconds=30), lookback=timedelta(minutes=1))
    topics = ["t.leads.accepted"]

    async def publish(published_at: datetime) -> LeadAccepted:
        message = LeadAccepted(id=uuid.uuid4(), occurred_at=utcnow(), lead_id=uuid.uuid4(), source="web")
        async with transaction(pool) as conn:
            await conn.execute(
                "INSERT INTO outbox (topic, key, payload, published_at) VALUES ('t.leads.accepted', 'k', %s, %s)",
                (encode_message(message), published_at),
            )
        return message

    async with transaction(pool) as conn:
        start = await database_now(conn)
        assert await windows.reconcile(conn, topics, now=start, limit=100) == (0, False)
    # A relay's pass stamped this row 10 s before the last pass and committed it only now (the broker
    # lost it before the consumer read it); another row is published after the last pass.
    late = await publish(start - timedelta(seconds=10))
    fresh = await publish(start + timedelta(seconds=1))
    async with transaction(pool) as conn:
        assert await windows.reconcile(conn, topics, now=start + timedelta(seconds=5), limit=100) == (1, False)
    assert [row["event_id"] for row in await deliveries(pool, endpoint)] == [fresh.id]
    async with transaction(pool) as conn:  # the late window reaches the stamp a lag later
        assert await windows.reconcile(conn, topics, now=start + timedelta(seconds=25), limit=100) == (1, False)
    assert {row["event_id"] for row in await deliveries(pool, endpoint)} == {fresh.id, late.id}
    async with transaction(pool) as conn:  # both rows read again by the late window: nothing new
        assert await windows.reconcile(conn, topics, now=start + timedelta(seconds=60), limit=100) == (0, False)
    assert len(await deliveries(pool, endpoint)) == 2
