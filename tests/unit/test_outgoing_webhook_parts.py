"""Outgoing webhooks, the parts without I/O: signatures (checked with the independent ``standardwebhooks``
package), secrets kept encrypted, which addresses are refused, and the event mapping table."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from proto.messages import (
    EmailEvent,
    EnrollmentEnded,
    EnrollmentStarted,
    LeadAccepted,
    LeadCustomEvent,
    LeadErased,
    confirmed_lead_message_id,
)
from services.common.config import ConfigError, WebhooksSettings, load_settings
from services.common.webhook_addresses import RefusedWebhookUrl, address_refusal, check_webhook_url
from services.common.webhook_events import ENDPOINT_DISABLED, EVENT_TYPES, MAPPINGS, webhook_body, webhook_event_of
from services.common.webhook_secrets import (
    UndecryptableSecret,
    decrypt_secret,
    encrypt_secret,
    new_signing_secret,
)
from services.outgoing_webhooks.delivery import parse_schedule
from services.outgoing_webhooks.signing import signed_headers

HMAC = "k" * 8 + "0123456789abcdefghijklmnopqrstuvwxyz"


# --- signatures -----------------------------------------------------------------------------------


def test_signed_headers_verify_with_the_standardwebhooks_package() -> None:
    secret = new_signing_secret()
    body = b'{"type":"lead.accepted","timestamp":"2026-11-30T04:00:00.000Z","data":{"lead_id":"x"}}'
    headers = signed_headers(secret, "0d7c1b44-6a5e-4e8e-9c0e-3d7e1f2a9b10", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == msgspec.json.decode(body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")


def test_with_a_previous_secret_the_header_holds_two_signatures_and_either_secret_verifies() -> None:
    new, previous = new_signing_secret(), new_signing_secret()
    body = b'{"type":"lead.accepted","timestamp":"2026-11-30T04:00:00.000Z","data":{}}'
    headers = signed_headers(new, "msg-1", int(time.time()), body, previous_secret=previous)
    entries = headers["webhook-signature"].split(" ")
    assert len(entries) == 2
    assert all(entry.startswith("v1,") for entry in entries)
    assert entries[0] == signed_headers(new, "msg-1", int(headers["webhook-timestamp"]), body)["webhook-signature"]
    assert Webhook(new).verify(body, headers) == Webhook(previous).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_signing_secret()).verify(body, headers)


def test_a_changed_body_or_id_fails_verification() -> None:
    secret = new_signing_secret()
    headers = signed_headers(secret, "msg-1", int(time.time()), b'{"a":1}')
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":1}', {**headers, "webhook-id": "msg-2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(new_signing_secret()).verify(b'{"a":1}', headers)


def test_secret_is_whsec_and_base64_of_32_random_bytes() -> None:
    secret = new_signing_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert new_signing_secret() != secret


# --- secrets at rest ------------------------------------------------------------------------------


def test_stored_secret_is_encrypted_and_decrypts_only_for_its_endpoint() -> None:
    secret, endpoint = new_signing_secret(), uuid.uuid4()
    stored = encrypt_secret(secret, endpoint, HMAC)
    assert secret.encode() not in stored
    assert secret.removeprefix("whsec_").encode() not in stored
    assert base64.b64decode(secret.removeprefix("whsec_")) not in stored
    assert decrypt_secret(stored, endpoint, [HMAC]) == secret
    with pytest.raises(UndecryptableSecret):
        decrypt_secret(stored, uuid.uuid4(), [HMAC])
    with pytest.raises(UndecryptableSecret):
        decrypt_secret(stored, endpoint, ["another secret of enough length and variety 0123456789"])


def test_secret_encrypted_under_the_previous_hmac_secret_still_decrypts() -> None:
    secret, endpoint = new_signing_secret(), uuid.uuid4()
    stored = encrypt_secret(secret, endpoint, HMAC)
    assert decrypt_secret(stored, endpoint, ["the new secret, long enough and varied 0123456789", HMAC]) == secret


# --- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # AWS, GCP, Azure metadata
        "fd00:ec2::254",  # AWS metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud metadata (shared address space)
        "0.0.0.0",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "fe80::1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(address) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.7:8080/hook", "not a public address"),
        ("http://[::1]/hook", "loopback"),
        ("http://localhost:9000/hook", "private name"),
        ("http://metadata.google.internal/", "private name"),
        ("ftp://hooks.example.com/", "http(s)"),
        ("https://user:pass@hooks.example.com/", "credentials"),
        ("hooks.example.com/hook", "http(s)"),
        ("https://hooks.example.com:99999/", "not a valid URL"),
    ],
)
def test_registration_refuses_urls_that_are_not_public_http(url: str, reason: str) -> None:
    with pytest.raises(RefusedWebhookUrl, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_webhook_url(url, allow_private_networks=False)


def test_registration_accepts_a_public_name_whose_addresses_are_checked_at_delivery() -> None:
    assert check_webhook_url("https://hooks.example.com/x?y=1", allow_private_networks=False)


def test_allowing_private_networks_lifts_only_the_address_rule() -> None:
    assert check_webhook_url("http://127.0.0.1:9000/hook", allow_private_networks=True)
    with pytest.raises(RefusedWebhookUrl):
        check_webhook_url("file:///etc/passwd", allow_private_networks=True)


# --- the mapping table ----------------------------------------------------------------------------


def test_every_mapped_type_can_be_subscribed_to() -> None:
    assert {m.webhook_type for m in MAPPINGS} <= set(EVENT_TYPES)


def test_lead_accepted_maps_to_ids_and_facts_without_personal_data() -> None:
    lead = uuid.uuid4()
    message = LeadAccepted(
        id=uuid.uuid4(), occurred_at=datetime(2026, 11, 30, 4, 0, tzinfo=UTC), lead_id=lead, source="web", tags=["a"]
    )
    event = webhook_event_of(message)
    assert event is not None
    assert event.id == message.id
    assert msgspec.json.decode(webhook_body(event)) == {
        "type": "lead.accepted",
        "timestamp": "2026-11-30T04:00:00.000Z",
        "data": {"lead_id": str(lead), "source": "web", "tags": ["a"]},
    }


def test_the_lead_accepted_a_confirmation_queues_is_announced_as_lead_confirmed() -> None:
    lead = uuid.uuid4()
    confirmed = LeadAccepted(
        id=confirmed_lead_message_id(lead), occurred_at=datetime.now(UTC), lead_id=lead, source="form"
    )
    first = LeadAccepted(id=lead, occurred_at=datetime.now(UTC), lead_id=lead, source="form")
    assert [e.type if e else None for e in (webhook_event_of(first), webhook_event_of(confirmed))] == [
        "lead.accepted",
        "lead.confirmed",
    ]


@pytest.mark.parametrize(
    ("internal", "published"),
    [
        ("sent", "email.sent"),
        ("opened", "email.opened"),
        ("clicked", "email.clicked"),
        ("bounced", "email.bounced"),
        ("complained", "email.complained"),
        ("unsubscribed", "email.unsubscribed"),
        ("dead", "email.dead"),
        ("failed", None),
        ("skipped", None),
    ],
)
def test_email_events_map_by_their_event(internal: str, published: str | None) -> None:
    message = EmailEvent(
        id=uuid.uuid4(), occurred_at=datetime.now(UTC), message_id=uuid.uuid4(), event=internal, lead_id=uuid.uuid4()
    )
    event = webhook_event_of(message)
    assert (event.type if event else None) == published


def test_every_type_an_endpoint_may_subscribe_to_is_mapped_but_the_services_own() -> None:
    assert set(EVENT_TYPES) - {m.webhook_type for m in MAPPINGS} == {ENDPOINT_DISABLED}


def test_lifecycle_messages_map_to_their_webhook_types_with_ids_and_facts_only() -> None:
    lead, enrollment, sequence = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
    ids = {"enrollment_id": enrollment, "lead_id": lead, "sequence_id": sequence, "revision": 3}
    messages = [
        LeadErased(id=uuid.uuid4(), occurred_at=at, lead_id=lead),
        LeadCustomEvent(id=uuid.uuid4(), occurred_at=at, event_id=7, lead_id=lead, event="purchased"),
        EnrollmentStarted(id=uuid.uuid4(), occurred_at=at, **ids),  # type: ignore[arg-type]
        EnrollmentEnded(id=uuid.uuid4(), occurred_at=at, outcome="completed", **ids),  # type: ignore[arg-type]
        EnrollmentEnded(id=uuid.uuid4(), occurred_at=at, outcome="exited", reason="goal", **ids),  # type: ignore[arg-type]
    ]
    events = [webhook_event_of(m) for m in messages]
    enrollment_data = {
        "enrollment_id": str(enrollment),
        "lead_id": str(lead),
        "sequence_id": str(sequence),
        "revision": 3,
    }
    assert [(e.type, e.data) if e else None for e in events] == [
        ("lead.erased", {"lead_id": str(lead)}),
        ("lead.custom_event", {"event_id": 7, "lead_id": str(lead), "event": "purchased"}),
        ("enrollment.started", enrollment_data),
        ("enrollment.completed", enrollment_data),
        ("enrollment.exited", {**enrollment_data, "reason": "goal"}),
    ]
    assert [e.id for e in events if e] == [m.id for m in messages]


def test_the_default_schedule_retries_for_more_than_24_hours() -> None:
    settings = load_settings(
        WebhooksSettings,
        {"DATABASE_URL": "postgresql://db/healingwork", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "HMAC_SECRET": HMAC},
    )
    schedule = parse_schedule(settings.webhook_retry_schedule_s)
    assert sum(schedule) > 24 * 3600
    assert settings.webhook_timeout_s == 10.0
    assert settings.webhook_allow_private_networks is False


def test_a_malformed_retry_schedule_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_RETRY_SCHEDULE_S"):
        load_settings(
            WebhooksSettings,
            {
                "DATABASE_URL": "postgresql://db/healingwork",
                "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
                "HMAC_SECRET": HMAC,
                "WEBHOOK_RETRY_SCHEDULE_S": "5,soon",
            },
        )
