"""Updating outgoing webhook endpoints over real HTTP: ``PATCH /v1/webhook-endpoints/{id}`` (url, events,
description, enabled) and ``POST /v1/webhook-endpoints/{id}/rotate-secret``. Real PostgreSQL, a real
receiver; the deliverer's passes are driven one at a time (:func:`deliver_due`) so what reaches the
receiver after each change is checked without sleeping; signatures are verified with the independent
``standardwebhooks`` package."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import psycopg_pool
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.common.db import Connection, transaction
from services.common.webhook_events import WebhookEvent
from services.outgoing_webhooks.deliverer import DeliveryRules, deliver_due
from services.outgoing_webhooks.delivery import reencrypt_secrets
from services.outgoing_webhooks.fanout import fan_out
from services.outgoing_webhooks.safe_http import SafeHttpClient
from tests.support.intake import Intake, create_api_client, running_intake
from tests.support.platform import fetch_all
from tests.support.webhook_receiver import Answer, WebhookReceiver

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]


def rules(intake: Intake, schedule: list[float], *, batch_size: int = 50) -> DeliveryRules:
    """The deliverer's rules with the intake's HMAC_SECRET (which encrypted the endpoints' secrets)."""
    return DeliveryRules(
        batch_size=batch_size, lease_s=60.0, schedule=schedule, hmac_secrets=[intake.settings.hmac_secret]
    )


async def register(intake: Intake, url: str, events: list[str], description: str = "") -> dict[str, object]:
    response = await intake.http.post(
        "/v1/webhook-endpoints", json={"url": url, "events": events, "description": description}
    )
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


async def listed(intake: Intake, endpoint: object) -> dict[str, object]:
    [found] = [e for e in (await intake.http.get("/v1/webhook-endpoints")).json()["endpoints"] if e["id"] == endpoint]
    return dict(found)


def event(kind: str = "lead.accepted") -> WebhookEvent:
    return WebhookEvent(
        id=uuid.uuid4(),
        type=kind,
        occurred_at=datetime(2026, 11, 30, 8, 0, tzinfo=UTC),
        data={"lead_id": str(uuid.uuid4()), "source": "website", "tags": []},
    )


async def queue(pool: Pool, *events: WebhookEvent) -> int:
    async with transaction(pool) as conn:
        return await fan_out(conn, events)


async def delivery_statuses(intake: Intake, endpoint: object) -> list[str]:
    """The endpoint's deliveries' statuses, oldest first."""
    deliveries = (await intake.http.get(f"/v1/webhook-endpoints/{endpoint}/deliveries")).json()["deliveries"]
    return [d["status"] for d in reversed(deliveries)]


# --- PATCH: each field ----------------------------------------------------------------------------


async def test_patching_the_url_sends_later_deliveries_there_with_the_same_id_and_secret(
    intake: Intake, pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    created = await register(intake, receiver.url + "/old", ["lead.accepted"])
    response = await intake.http.patch(f"/v1/webhook-endpoints/{created['id']}", json={"url": receiver.url + "/new"})
    assert response.status_code == 200, response.text
    assert response.json()["url"] == receiver.url + "/new"
    assert response.json()["id"] == created["id"]
    assert "secret" not in response.json()
    assert (await listed(intake, created["id"]))["url"] == receiver.url + "/new"

    await queue(pool, event())
    assert await deliver_due(pool, client, rules(intake, [5.0])) == 1
    assert [r.path for r in receiver.received] == ["/new"]
    receiver.verified(str(created["secret"]))  # raises unless the registration's secret signed it


async def test_patching_the_events_changes_which_events_are_delivered(
    intake: Intake, pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    created = await register(intake, receiver.url, ["lead.accepted"])
    response = await intake.http.patch(
        f"/v1/webhook-endpoints/{created['id']}", json={"events": ["email.sent", "email.sent", "lead.erased"]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["events"] == ["email.sent", "lead.erased"]  # duplicates dropped, as at registration

    await queue(pool, event("lead.accepted"), event("email.sent"))
    await deliver_due(pool, client, rules(intake, [5.0]))
    assert [p["type"] for p in receiver.verified(str(created["secret"]))] == ["email.sent"]


async def test_patching_the_description_changes_only_the_description(intake: Intake) -> None:
    created = await register(intake, "https://hooks.example.com/a", ["lead.accepted"], description="CRM")
    response = await intake.http.patch(f"/v1/webhook-endpoints/{created['id']}", json={"description": "Billing"})
    assert response.status_code == 200, response.text
    after = await listed(intake, created["id"])
    assert after["description"] == "Billing"
    assert {k: v for k, v in after.items() if k != "description"} == {
        k: v for k, v in created.items() if k not in ("description", "secret")
    }


async def test_an_empty_patch_changes_nothing_and_answers_the_endpoint(intake: Intake) -> None:
    created = await register(intake, "https://hooks.example.com/a", ["lead.accepted"])
    [before] = await fetch_all(intake.settings.database_url, "SELECT * FROM webhook_endpoints")
    response = await intake.http.patch(f"/v1/webhook-endpoints/{created['id']}", json={})
    assert response.status_code == 200, response.text
    assert response.json()["url"] == "https://hooks.example.com/a"
    assert await fetch_all(intake.settings.database_url, "SELECT * FROM webhook_endpoints") == [before]


# --- PATCH: enabled -------------------------------------------------------------------------------


async def test_reenabling_a_disabled_endpoint_resumes_deliveries_and_earlier_failures_stay_failed(
    intake: Intake, pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    created = await register(intake, receiver.url + "/crm", ["lead.accepted"])
    endpoint = created["id"]
    await queue(pool, event(), event())
    receiver.default = Answer(status=500)
    # A one-attempt schedule: the first delivery fails for good and disables the endpoint.
    await deliver_due(pool, client, rules(intake, [], batch_size=1))
    disabled = await listed(intake, endpoint)
    assert disabled["status"] == "disabled"
    assert "every delivery failed since" in str(disabled["disabled_reason"])
    assert await deliver_due(pool, client, rules(intake, [])) == 0  # the other waits while disabled
    assert await queue(pool, event()) == 0  # and events while disabled are not queued for it

    response = await intake.http.patch(f"/v1/webhook-endpoints/{endpoint}", json={"enabled": True})
    assert response.status_code == 200, response.text
    enabled = response.json()
    assert (enabled["status"], enabled["disabled_reason"], enabled["disabled_at"]) == ("enabled", None, None)

    # The delivery queued before the endpoint was enabled again fails too: the failure state was reset,
    # so it no longer disables the endpoint (only deliveries queued after re-enabling can).
    assert await deliver_due(pool, client, rules(intake, [])) == 1
    assert (await listed(intake, endpoint))["status"] == "enabled"

    receiver.default = Answer(status=200)
    received_before = len(receiver.received)
    assert await queue(pool, event()) == 1
    assert await deliver_due(pool, client, rules(intake, [])) == 1
    assert len(receiver.received) == received_before + 1
    receiver.verified(str(created["secret"]))
    # What failed stays failed (the retry route replays it); the new event was delivered.
    assert await delivery_statuses(intake, endpoint) == ["failed", "failed", "delivered"]


async def test_disabling_an_endpoint_by_patch_stops_its_deliveries_until_enabled(
    intake: Intake, pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    created = await register(intake, receiver.url, ["lead.accepted"])
    await queue(pool, event())
    response = await intake.http.patch(f"/v1/webhook-endpoints/{created['id']}", json={"enabled": False})
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["disabled_reason"]) == ("disabled", "disabled by an admin")
    assert await deliver_due(pool, client, rules(intake, [5.0])) == 0
    assert receiver.received == []

    assert (
        await intake.http.patch(f"/v1/webhook-endpoints/{created['id']}", json={"enabled": True})
    ).status_code == 200
    assert await deliver_due(pool, client, rules(intake, [5.0])) == 1
    assert len(receiver.verified(str(created["secret"]))) == 1


# --- PATCH: bad input, unknown ids -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["lead.exploded"]}, "/events/0"),
        ({"events": []}, "/events"),
        ({"url": 7}, "/url"),
        ({"url": "ftp://hooks.example.com"}, "/url"),
        ({"url": "https://hooks.example.com/\u0000"}, "/url"),
        ({"description": "a\u0000b"}, "/description"),
        ({"description": "x" * 501}, "/description"),
        ({"enabled": "yes"}, "/enabled"),
        ({"secret": "mine"}, "/"),
        ({"url": "https://elsewhere.example.com", "description": "a\u0007b"}, "/description"),
        (["url"], "/"),
    ],
)
async def test_an_invalid_update_names_the_field_and_changes_nothing(intake: Intake, body: object, field: str) -> None:
    created = await register(intake, "https://hooks.example.com/a", ["lead.accepted"], description="CRM")
    [before] = await fetch_all(intake.settings.database_url, "SELECT * FROM webhook_endpoints")
    response = await intake.http.patch(f"/v1/webhook-endpoints/{created['id']}", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert await fetch_all(intake.settings.database_url, "SELECT * FROM webhook_endpoints") == [before]


async def test_an_update_that_is_not_json_is_415_and_changes_nothing(intake: Intake) -> None:
    created = await register(intake, "https://hooks.example.com/a", ["lead.accepted"])
    response = await intake.http.patch(
        f"/v1/webhook-endpoints/{created['id']}",
        content=b"url=https://elsewhere.example.com",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert (await listed(intake, created["id"]))["url"] == "https://hooks.example.com/a"


async def test_updating_or_rotating_an_unknown_endpoint_is_404(intake: Intake) -> None:
    missing = uuid.uuid4()
    patched = await intake.http.patch(f"/v1/webhook-endpoints/{missing}", json={"enabled": True})
    assert patched.status_code == 404
    assert patched.headers["content-type"] == "application/problem+json"
    rotated = await intake.http.post(f"/v1/webhook-endpoints/{missing}/rotate-secret")
    assert rotated.status_code == 404
    assert rotated.headers["content-type"] == "application/problem+json"


async def test_updating_and_rotating_need_the_admin_scope(intake: Intake) -> None:
    created = await register(intake, "https://hooks.example.com/a", ["lead.accepted"])
    _, key = await create_api_client(intake.settings.database_url, "reader", ["leads:read", "leads:write"])
    async with intake.anonymous(headers={"Authorization": f"Bearer {key}"}) as reader:
        patched = await reader.patch(f"/v1/webhook-endpoints/{created['id']}", json={"enabled": False})
        assert patched.status_code == 403
        assert (await reader.post(f"/v1/webhook-endpoints/{created['id']}/rotate-secret")).status_code == 403
    async with intake.anonymous() as anonymous:
        patched = await anonymous.patch(f"/v1/webhook-endpoints/{created['id']}", json={"enabled": False})
        assert patched.status_code == 401
        assert (await anonymous.post(f"/v1/webhook-endpoints/{created['id']}/rotate-secret")).status_code == 401
    assert (await listed(intake, created["id"]))["status"] == "enabled"


# --- rotate-secret ---------------------------------------------------------------------------------


def signatures(receiver: WebhookReceiver, index: int) -> list[str]:
    return receiver.received[index].headers["webhook-signature"].split(" ")


async def test_during_the_grace_period_receivers_holding_the_old_or_the_new_secret_both_verify(
    intake: Intake, pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    created = await register(intake, receiver.url, ["lead.accepted"])
    old = str(created["secret"])
    response = await intake.http.post(f"/v1/webhook-endpoints/{created['id']}/rotate-secret")
    assert response.status_code == 200, response.text
    rotated = response.json()
    new = rotated["secret"]
    assert new.startswith("whsec_")
    assert new != old
    assert rotated["id"] == created["id"]
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)  # the 24 h default
    listed_text = (await intake.http.get("/v1/webhook-endpoints")).text
    assert new[6:] not in listed_text
    assert old[6:] not in listed_text
    [row] = await fetch_all(
        intake.settings.database_url, "SELECT secret_ciphertext, previous_secret_ciphertext FROM webhook_endpoints"
    )
    for stored in row.values():
        for secret in (old, new):
            assert secret[6:].encode() not in bytes(stored)  # type: ignore[arg-type]

    await queue(pool, event())
    assert await deliver_due(pool, client, rules(intake, [5.0])) == 1
    assert len(signatures(receiver, 0)) == 2
    [by_new] = receiver.verified(new)
    [by_old] = receiver.verified(old)
    assert by_new == by_old


async def test_after_the_grace_period_only_the_new_secret_signs(
    migrated_database_url: str,
    kafka_bootstrap_servers: str,
    topic_prefix: str,
    pool: Pool,
    receiver: WebhookReceiver,
    client: SafeHttpClient,
) -> None:
    async with running_intake(
        migrated_database_url,
        kafka_bootstrap_servers,
        topic_prefix,
        webhook_allow_private_networks=True,
        webhook_secret_grace_s=0.5,
    ) as intake:
        created = await register(intake, receiver.url, ["lead.accepted"])
        new = (await intake.http.post(f"/v1/webhook-endpoints/{created['id']}/rotate-secret")).json()["secret"]
        await asyncio.sleep(1.0)  # the grace period runs out
        await queue(pool, event())
        assert await deliver_due(pool, client, rules(intake, [5.0])) == 1
    assert len(signatures(receiver, 0)) == 1
    receiver.verified(new)
    with pytest.raises(WebhookVerificationError):
        receiver.verified(str(created["secret"]))


async def test_a_second_rotation_drops_the_first_secret(
    intake: Intake, pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    created = await register(intake, receiver.url, ["lead.accepted"])
    second = (await intake.http.post(f"/v1/webhook-endpoints/{created['id']}/rotate-secret")).json()["secret"]
    third = (await intake.http.post(f"/v1/webhook-endpoints/{created['id']}/rotate-secret")).json()["secret"]
    await queue(pool, event())
    await deliver_due(pool, client, rules(intake, [5.0]))
    receiver.verified(second)
    receiver.verified(third)
    with pytest.raises(WebhookVerificationError):
        Webhook(str(created["secret"])).verify(receiver.received[0].body, receiver.received[0].headers)


async def test_the_previous_secret_is_encrypted_again_after_hmac_secret_rotates(
    intake: Intake, pool: Pool, receiver: WebhookReceiver, client: SafeHttpClient
) -> None:
    created = await register(intake, receiver.url, ["lead.accepted"])
    new = (await intake.http.post(f"/v1/webhook-endpoints/{created['id']}/rotate-secret")).json()["secret"]
    rotated_hmac = "rotated-" + uuid.uuid4().hex + uuid.uuid4().hex
    async with transaction(pool) as conn:
        assert (
            await reencrypt_secrets(conn, hmac_secret=rotated_hmac, hmac_secret_previous=intake.settings.hmac_secret)
            == 1
        )
    await queue(pool, event())
    only_new_hmac = DeliveryRules(batch_size=50, lease_s=60.0, schedule=[5.0], hmac_secrets=[rotated_hmac])
    assert await deliver_due(pool, client, only_new_hmac) == 1
    assert len(signatures(receiver, 0)) == 2
    receiver.verified(new)
    receiver.verified(str(created["secret"]))
