"""The admin API of outgoing webhooks over real HTTP (``/v1/webhook-endpoints``), and the delivery
service end to end: a lead submitted to the intake reaches a receiver as a signed ``lead.accepted``
through the outbox, the broker and ``healingwork webhooks``; and the lifecycle announcements (an
enrollment started and completed, a lead erased, a custom event, an exit by goal) from real actions."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proto.messages import EmailEvent
from services.common.clock import utcnow
from services.common.config import DatabaseSettings, SchedulerSettings, WebhooksSettings
from services.common.db import connect, open_pool, transaction
from services.common.outbox import enqueue_message
from services.common.runtime import service_runtime
from services.common.sequences import apply_sequence, parse_sequence_document, sequence_id
from services.outgoing_webhooks.service import serve_webhooks
from services.scheduler.service import run_scheduler
from tests.support.intake import Intake, bearer, create_api_client, running_intake
from tests.support.platform import fetch_all, make_settings, running, wait_until
from tests.support.preferences import COURSE, TIPS, apply_sequences, enrolled_lead, page_path
from tests.support.webhook_receiver import Answer, WebhookReceiver

pytestmark = pytest.mark.integration

LEAD = {
    "email": "grace@example.com",
    "source": "website",
    "consent": {"marketing": True, "text": "Yes, send me the newsletter."},
}


async def test_registering_an_endpoint_shows_its_secret_once(intake: Intake, receiver: WebhookReceiver) -> None:
    response = await intake.http.post(
        "/v1/webhook-endpoints",
        json={"url": receiver.url + "/hook", "events": ["lead.accepted", "email.sent"], "description": "CRM"},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["secret"].startswith("whsec_")
    assert (created["url"], created["events"], created["status"]) == (
        receiver.url + "/hook",
        ["lead.accepted", "email.sent"],
        "enabled",
    )

    listed = (await intake.http.get("/v1/webhook-endpoints")).json()["endpoints"]
    assert [e["id"] for e in listed] == [created["id"]]
    assert "secret" not in listed[0]
    assert created["secret"][6:] not in (await intake.http.get("/v1/webhook-endpoints")).text
    [row] = await fetch_all(intake.settings.database_url, "SELECT secret_ciphertext FROM webhook_endpoints")
    assert created["secret"].encode() not in bytes(row["secret_ciphertext"])  # type: ignore[arg-type]
    assert created["secret"][6:].encode() not in bytes(row["secret_ciphertext"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/hook", "http://169.254.169.254/latest/meta-data/", "http://10.20.30.40/hook"],
)
async def test_private_and_metadata_urls_are_refused_at_registration(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str, url: str
) -> None:
    async with running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix) as intake:
        response = await intake.http.post("/v1/webhook-endpoints", json={"url": url, "events": ["lead.accepted"]})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    [error] = response.json()["errors"]
    assert error["field"] == "/url"
    assert await fetch_all(migrated_database_url, "SELECT id FROM webhook_endpoints") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://hooks.example.com", "events": ["lead.exploded"]}, "/events/0"),
        ({"url": "https://hooks.example.com", "events": []}, "/events"),
        ({"url": "https://hooks.example.com"}, "/"),
        ({"url": 7, "events": ["lead.accepted"]}, "/url"),
        ({"url": "https://hooks.example.com", "events": ["lead.accepted"], "secret": "mine"}, "/"),
        ({"url": "https://hooks.example.com/\u0000", "events": ["lead.accepted"]}, "/url"),
        ({"url": "https://hooks.example.com", "events": ["lead.accepted"], "description": "a\u0000b"}, "/description"),
    ],
)
async def test_an_invalid_registration_names_the_field(intake: Intake, body: dict[str, object], field: str) -> None:
    response = await intake.http.post("/v1/webhook-endpoints", json=body)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_the_endpoints_api_needs_the_admin_scope(intake: Intake) -> None:
    _, key = await create_api_client(intake.settings.database_url, "reader", ["leads:read", "leads:write"])
    async with intake.anonymous(headers={"Authorization": f"Bearer {key}"}) as reader:
        assert (await reader.get("/v1/webhook-endpoints")).status_code == 403
        response = await reader.post(
            "/v1/webhook-endpoints", json={"url": "https://hooks.example.com", "events": ["lead.accepted"]}
        )
        assert response.status_code == 403
    async with intake.anonymous() as anonymous:
        assert (await anonymous.get("/v1/webhook-endpoints")).status_code == 401


async def test_deleting_an_endpoint_removes_it_and_an_unknown_one_is_404(intake: Intake) -> None:
    created = (
        await intake.http.post(
            "/v1/webhook-endpoints", json={"url": "https://hooks.example.com/a", "events": ["lead.accepted"]}
        )
    ).json()
    assert (await intake.http.delete(f"/v1/webhook-endpoints/{created['id']}")).status_code == 204
    assert (await intake.http.get("/v1/webhook-endpoints")).json()["endpoints"] == []
    assert (await intake.http.delete(f"/v1/webhook-endpoints/{created['id']}")).status_code == 404
    assert (await intake.http.get(f"/v1/webhook-endpoints/{uuid.uuid4()}/deliveries")).status_code == 404


async def settled_deliveries(intake: Intake, endpoint: str, *, count: int) -> list[dict[str, object]]:
    """The endpoint's deliveries once ``count`` of them are no longer pending (the receiver answers
    before the outcome is committed)."""
    async with asyncio.timeout(60):
        while True:
            listed = (await intake.http.get(f"/v1/webhook-endpoints/{endpoint}/deliveries")).json()["deliveries"]
            if len([d for d in listed if d["status"] != "pending"]) >= count:
                return list(listed)
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running_webhooks(intake: Intake, **overrides: object) -> AsyncIterator[None]:
    """``healingwork webhooks`` in this process, on the intake's database, broker and topics."""
    prefix = intake.settings.topic_leads_accepted.removesuffix("leads.accepted")
    settings = make_settings(
        WebhooksSettings,
        intake.settings.database_url,
        intake.settings.kafka_bootstrap_servers,
        prefix,
        hmac_secret=intake.settings.hmac_secret,
        webhook_allow_private_networks=True,
        webhook_poll_interval_s=0.2,
        **overrides,
    )
    async with service_runtime(settings, handle_signals=False) as runtime:
        task = asyncio.create_task(serve_webhooks(settings, runtime))
        try:
            yield
        finally:
            runtime.stop.set()
            await task


async def test_a_submitted_lead_reaches_the_endpoint_signed_and_deliveries_can_be_listed_and_retried(
    intake: Intake, receiver: WebhookReceiver
) -> None:
    created = (
        await intake.http.post(
            "/v1/webhook-endpoints", json={"url": receiver.url + "/crm", "events": ["lead.accepted", "email.opened"]}
        )
    ).json()
    async with running_webhooks(intake, webhook_retry_schedule_s="0.2"):
        lead = (await intake.http.post("/v1/leads", json=LEAD)).json()["id"]
        pool = await open_pool(DatabaseSettings(database_url=intake.settings.database_url))
        async with transaction(pool) as conn:
            await enqueue_message(
                conn,
                intake.settings.topic_email_events,
                "m",
                EmailEvent(
                    id=uuid.uuid4(),
                    occurred_at=utcnow(),
                    message_id=uuid.uuid4(),
                    event="opened",
                    lead_id=uuid.UUID(lead),
                    automated=True,
                ),
            )
        await pool.close()
        await receiver.wait_for(2)
        payloads = sorted(receiver.verified(created["secret"]), key=lambda p: str(p["type"]))
        assert [p["type"] for p in payloads] == ["email.opened", "lead.accepted"]
        assert payloads[1]["data"] == {"lead_id": lead, "source": "website", "tags": []}
        assert payloads[0]["data"]["automated"] is True  # type: ignore[index]

        deliveries = await settled_deliveries(intake, created["id"], count=2)
        assert {d["status"] for d in deliveries} == {"delivered"}
        assert {d["response_status"] for d in deliveries} == {200}
        assert {d["id"] for d in deliveries} == {r.headers["webhook-id"] for r in receiver.received}

        receiver.answers.append(Answer(status=200))
        first = deliveries[0]
        retried = await intake.http.post(f"/v1/webhook-endpoints/{created['id']}/deliveries/{first['id']}/retry")
        assert retried.status_code == 202
        assert retried.json()["status"] == "pending"
        await receiver.wait_for(3)
        assert receiver.received[2].headers["webhook-id"] == first["id"]
    missing = await intake.http.post(f"/v1/webhook-endpoints/{created['id']}/deliveries/{uuid.uuid4()}/retry")
    assert missing.status_code == 404


# --- what the platform announces beyond leads and emails: lifecycle.events ----------------------------


def one_sequence(name: str, steps: list[dict[str, object]], **spec: object) -> Any:
    return parse_sequence_document(
        {
            "apiVersion": "healingwork.io/v1alpha1",
            "kind": "Sequence",
            "metadata": {"name": name},
            "spec": {"trigger": {"sources": ["website"]}, "steps": steps, **spec},
        },
        name,
    )


async def apply_one(intake: Intake, resource: Any) -> str:
    conn = await connect(DatabaseSettings(database_url=intake.settings.database_url))
    async with conn, conn.transaction():
        applied = await apply_sequence(conn, resource)
    return str(sequence_id(applied.namespace, applied.name))


def scheduler_of(intake: Intake) -> SchedulerSettings:
    prefix = intake.settings.topic_leads_accepted.removesuffix("leads.accepted")
    return make_settings(
        SchedulerSettings, intake.settings.database_url, intake.settings.kafka_bootstrap_servers, prefix
    )


async def register_for(intake: Intake, receiver: WebhookReceiver, events: list[str]) -> str:
    response = await intake.http.post("/v1/webhook-endpoints", json={"url": receiver.url + "/crm", "events": events})
    assert response.status_code == 201, response.text
    return str(response.json()["secret"])


def by_type(payloads: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    assert len({p["type"] for p in payloads}) == len(payloads), payloads
    return {str(p["type"]): p["data"] for p in payloads}  # type: ignore[misc]


async def test_an_enrollment_that_starts_completes_and_whose_lead_is_erased_reaches_the_endpoint_signed(
    intake: Intake, receiver: WebhookReceiver
) -> None:
    sequence = await apply_one(intake, one_sequence("single", [{"name": "only", "subject": "Hi", "html": "<p>Hi</p>"}]))
    secret = await register_for(intake, receiver, ["enrollment.started", "enrollment.completed", "lead.erased"])
    async with running_webhooks(intake), running(run_scheduler, scheduler_of(intake)):
        lead = (await intake.http.post("/v1/leads", json=LEAD)).json()["id"]
        await receiver.wait_for(2)
        enrolled = by_type(receiver.verified(secret))
        [row] = await fetch_all(intake.settings.database_url, "SELECT id, revision, status FROM enrollments")
        assert row["status"] == "completed"
        expected = {
            "enrollment_id": str(row["id"]),
            "lead_id": lead,
            "sequence_id": sequence,
            "revision": row["revision"],
        }
        assert enrolled == {"enrollment.started": expected, "enrollment.completed": expected}

        assert (await intake.http.delete(f"/v1/leads/{lead}")).status_code == 204
        await receiver.wait_for(3)
    payloads = receiver.verified(secret)
    assert payloads[2]["type"] == "lead.erased"
    assert payloads[2]["data"] == {"lead_id": lead}
    assert "grace" not in receiver.received[2].body.decode()


async def test_a_custom_event_that_reaches_the_goal_is_announced_and_so_is_the_exit_with_its_reason(
    intake: Intake, receiver: WebhookReceiver
) -> None:
    sequence = await apply_one(
        intake,
        one_sequence(
            "goal",
            [
                {"name": "hello", "subject": "Hi", "html": "<p>Hi</p>"},
                {"name": "nudge", "delay": "2d", "subject": "Still there?", "html": "<p>…</p>"},
            ],
            exitWhen="events.exists(e, e.type == 'purchased')",
        ),
    )
    secret = await register_for(intake, receiver, ["lead.custom_event", "enrollment.exited"])
    url = intake.settings.database_url
    _, events_key = await create_api_client(url, "shop", ["events:write"])

    async def first_step_queued() -> bool:
        return await fetch_all(url, "SELECT 1 FROM enrollments WHERE next_step = 1") != []

    async with running_webhooks(intake), running(run_scheduler, scheduler_of(intake)):
        lead = (await intake.http.post("/v1/leads", json=LEAD)).json()["id"]
        await wait_until(first_step_queued, timeout=60, what="the first step queued")
        async with intake.anonymous(headers=bearer(events_key)) as crm:
            posted = await crm.post(
                f"/v1/leads/{lead}/events", json={"type": "purchased", "properties": {"total": 42, "name": "Grace"}}
            )
        assert posted.status_code == 201, posted.text
        await receiver.wait_for(2)
    announced = by_type(receiver.verified(secret))
    [enrollment] = await fetch_all(url, "SELECT id, revision, status, exit_reason FROM enrollments")
    assert (enrollment["status"], enrollment["exit_reason"]) == ("completed", "goal")
    assert announced == {
        "lead.custom_event": {"event_id": posted.json()["id"], "lead_id": lead, "event": "purchased"},
        "enrollment.exited": {
            "enrollment_id": str(enrollment["id"]),
            "lead_id": lead,
            "sequence_id": sequence,
            "revision": enrollment["revision"],
            "reason": "goal",
        },
    }


async def test_leaving_a_sequence_on_the_preference_page_reaches_the_endpoint_as_exited_unsubscribed(
    intake: Intake, receiver: WebhookReceiver
) -> None:
    url = intake.settings.database_url
    await apply_sequences(url, [TIPS, COURSE])
    sent = await enrolled_lead(url)
    secret = await register_for(intake, receiver, ["enrollment.exited"])
    keep_course = f"form=preferences&keep={sequence_id('default', 'course')}"
    async with running_webhooks(intake):
        async with intake.anonymous() as subscriber:
            left = await subscriber.post(
                page_path(intake.settings, sent["tips"]),
                content=keep_course,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        assert left.status_code == 200
        await receiver.wait_for(1)
    [tips] = await fetch_all(
        url,
        """SELECT e.id, e.lead_id, e.revision FROM enrollments e JOIN sequences s ON s.id = e.sequence_id
           WHERE s.name = 'tips'""",
    )
    [payload] = receiver.verified(secret)
    assert payload["type"] == "enrollment.exited"
    assert payload["data"] == {
        "enrollment_id": str(tips["id"]),
        "lead_id": str(tips["lead_id"]),
        "sequence_id": str(sequence_id("default", "tips")),
        "revision": tips["revision"],
        "reason": "unsubscribed",
    }
