"""POST /v1/webhooks/email-events: the generic HMAC-signed format and Amazon SES via SNS.

SNS signs with a key whose certificate lives at an AWS URL this machine cannot reach; the tests
generate a key and a self-signed certificate locally, sign exactly as SNS does, and inject a fetcher
that serves that certificate for the SNS URL. The verification code itself is the production code.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from services.common.config import IntakeSettings
from services.common.identity import email_hash
from services.common.signatures import timestamped_signature
from services.intake.sns import string_to_sign
from tests.integration.test_tracking import events, sent_message
from tests.support.platform import apply_examples, fetch_all, make_settings, serve_intake

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "5d2c8e1f9a3b7c6d4e0f1a2b3c4d5e6f7a8b9c0d"
TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:ses-events"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
SUBSCRIBE_URL = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=abc"


def _key_and_certificate() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, certificate.public_bytes(serialization.Encoding.PEM)


KEY, CERT_PEM = _key_and_certificate()


class FakeAws:
    """Serves the locally generated certificate at CERT_URL and records every fetched URL."""

    def __init__(self) -> None:
        self.fetched: list[str] = []

    async def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        return CERT_PEM if url == CERT_URL else b"<ConfirmSubscriptionResponse/>"


def sns_message(kind: str, message: str, *, version: str = "1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC_ARN,
        "Message": message,
        "Timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
        **extra,
    }
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303 - as SNS signs
    body["Signature"] = base64.b64encode(KEY.sign(string_to_sign(body), padding.PKCS1v15(), algorithm)).decode()
    return body


def ses_bounce(address: str, message_id: uuid.UUID | None, bounce_type: str = "Permanent") -> str:
    return json.dumps(
        {
            "notificationType": "Bounce",
            "bounce": {
                "bounceType": bounce_type,
                "bounceSubType": "General",
                "bouncedRecipients": [{"emailAddress": address, "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
            },
            "mail": {"messageId": "0100018c-ses", "commonHeaders": {"messageId": f"<{message_id}@example.com>"}},
        }
    )


@pytest.fixture
async def intake(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, IntakeSettings, FakeAws]]:
    await apply_examples(migrated_database_url)
    settings = make_settings(
        IntakeSettings,
        migrated_database_url,
        kafka_bootstrap_servers,
        topic_prefix,
        webhook_secret=WEBHOOK_SECRET,
        sns_topic_arns=TOPIC_ARN,
    )
    aws = FakeAws()
    async with (
        serve_intake(settings, sns_fetch=aws.fetch) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):
        yield client, settings, aws


def signed(body: bytes, *, secret: str = WEBHOOK_SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    return {
        "Content-Type": "application/json",
        "Webhook-Timestamp": timestamp,
        "Webhook-Signature": f"v1={timestamped_signature(secret, timestamp, body)}",
    }


async def suppressions(settings: IntakeSettings) -> list[dict[str, object]]:
    return await fetch_all(settings.database_url, "SELECT email_hash, reason FROM suppressions ORDER BY email_hash")


# --- generic -------------------------------------------------------------------------------------


async def test_a_signed_permanent_bounce_suppresses_the_address_and_records_the_event(
    intake: tuple[httpx.AsyncClient, IntakeSettings, FakeAws],
) -> None:
    client, settings, _ = intake
    message_id = await sent_message(settings.database_url)
    body = json.dumps(
        {"events": [{"id": "evt-1", "type": "bounced", "email": "grace@example.com", "message_id": str(message_id)}]}
    ).encode()

    first = await client.post("/v1/webhooks/email-events", content=body, headers=signed(body))
    again = await client.post("/v1/webhooks/email-events", content=body, headers=signed(body))  # provider retry

    assert (first.status_code, first.json()) == (200, {"accepted": 1})
    assert again.status_code == 200
    assert await suppressions(settings) == [
        {"email_hash": email_hash("grace@example.com", settings.suppression_hash_key), "reason": "bounced"}
    ]
    assert [(e["type"], e["message_id"]) for e in await events(settings)] == [("bounced", message_id)]


async def test_a_complaint_without_a_message_id_suppresses_the_normalized_address(
    intake: tuple[httpx.AsyncClient, IntakeSettings, FakeAws],
) -> None:
    client, settings, _ = intake
    body = json.dumps({"events": [{"id": "c-1", "type": "complained", "email": " Ada@EXAMPLE.com "}]}).encode()

    response = await client.post("/v1/webhooks/email-events", content=body, headers=signed(body))

    assert response.status_code == 200
    assert await suppressions(settings) == [
        {"email_hash": email_hash("ada@example.com", settings.suppression_hash_key), "reason": "complained"}
    ]


async def test_a_transient_bounce_is_recorded_without_suppressing(
    intake: tuple[httpx.AsyncClient, IntakeSettings, FakeAws],
) -> None:
    client, settings, _ = intake
    message_id = await sent_message(settings.database_url)
    event = {"id": "t-1", "type": "bounced", "email": "grace@example.com", "message_id": str(message_id)}
    body = json.dumps({"events": [{**event, "bounce_type": "transient", "detail": "mailbox full"}]}).encode()

    await client.post("/v1/webhooks/email-events", content=body, headers=signed(body))

    assert await suppressions(settings) == []
    assert [(e["type"], e["detail"]) for e in await events(settings)] == [("bounced", "transient: mailbox full")]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Webhook-Timestamp": "now", "Webhook-Signature": "v1=00"},
        "wrong-secret",
        "stale",
        {"Webhook-Timestamp": "9" * 400, "Webhook-Signature": "v1=00"},
    ],
    ids=["unsigned", "garbage", "wrong-secret", "stale-timestamp", "timestamp-of-400-digits"],
)
async def test_an_unsigned_forged_or_replayed_request_gets_401_and_changes_nothing(
    intake: tuple[httpx.AsyncClient, IntakeSettings, FakeAws], headers: dict[str, str] | str
) -> None:
    client, settings, _ = intake
    body = json.dumps({"events": [{"id": "e", "type": "complained", "email": "ada@example.com"}]}).encode()
    if headers == "wrong-secret":
        headers = signed(body, secret="another-secret-0123456789abcdef0123456789")
    elif headers == "stale":
        headers = signed(body, at=time.time() - 3600)

    response = await client.post("/v1/webhooks/email-events", content=body, headers=headers)  # type: ignore[arg-type]

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert await suppressions(settings) == []


async def test_an_invalid_event_gets_422_naming_the_field(
    intake: tuple[httpx.AsyncClient, IntakeSettings, FakeAws],
) -> None:
    client, settings, _ = intake
    body = json.dumps({"events": [{"id": "e", "type": "delivered", "email": "ada@example.com"}]}).encode()

    response = await client.post("/v1/webhooks/email-events", content=body, headers=signed(body))

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "/events/0/type"
    assert await suppressions(settings) == []


# --- SES via SNS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
async def test_a_verified_ses_bounce_suppresses_the_recipient(
    intake: tuple[httpx.AsyncClient, IntakeSettings, FakeAws], version: str
) -> None:
    client, settings, aws = intake
    message_id = await sent_message(settings.database_url)
    body = sns_message("Notification", ses_bounce("grace@example.com", message_id), version=version)

    response = await client.post(
        "/v1/webhooks/email-events", json=body, headers={"x-amz-sns-message-type": "Notification"}
    )

    assert (response.status_code, response.json()) == (200, {"accepted": 1})
    assert aws.fetched == [CERT_URL]
    assert await suppressions(settings) == [
        {"email_hash": email_hash("grace@example.com", settings.suppression_hash_key), "reason": "bounced"}
    ]
    assert [(e["type"], e["message_id"]) for e in await events(settings)] == [("bounced", message_id)]


async def test_a_subscription_confirmation_is_verified_then_confirmed(
    intake: tuple[httpx.AsyncClient, IntakeSettings, FakeAws],
) -> None:
    client, _, aws = intake
    body = sns_message("SubscriptionConfirmation", "confirm", SubscribeURL=SUBSCRIBE_URL, Token="abc")

    response = await client.post(
        "/v1/webhooks/email-events", json=body, headers={"x-amz-sns-message-type": "SubscriptionConfirmation"}
    )

    assert response.status_code == 200
    assert aws.fetched == [CERT_URL, SUBSCRIBE_URL]


@pytest.mark.parametrize("forgery", ["tampered", "foreign-topic", "foreign-cert-url", "unknown-version"])
async def test_an_untrusted_sns_message_gets_401_and_changes_nothing(
    intake: tuple[httpx.AsyncClient, IntakeSettings, FakeAws], forgery: str
) -> None:
    client, settings, aws = intake
    body = sns_message("Notification", ses_bounce("grace@example.com", None))
    if forgery == "tampered":
        body["Message"] = ses_bounce("someone-else@example.com", None)
    elif forgery == "foreign-topic":
        body["TopicArn"] = "arn:aws:sns:eu-west-1:999999999999:other"
    elif forgery == "foreign-cert-url":
        body["SigningCertURL"] = "https://evil.example/sns.amazonaws.com.pem"
    else:
        body["SignatureVersion"] = "3"

    response = await client.post(
        "/v1/webhooks/email-events", json=body, headers={"x-amz-sns-message-type": "Notification"}
    )

    assert response.status_code == 401
    assert await suppressions(settings) == []
    assert "https://evil.example/sns.amazonaws.com.pem" not in aws.fetched


async def test_an_unreachable_sns_gets_503_with_retry_after(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    async def unreachable(url: str) -> bytes:
        raise OSError("network is unreachable")

    settings = make_settings(
        IntakeSettings, migrated_database_url, kafka_bootstrap_servers, topic_prefix, sns_topic_arns=TOPIC_ARN
    )
    body = sns_message("Notification", ses_bounce("grace@example.com", None))
    async with (
        serve_intake(settings, sns_fetch=unreachable) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):
        response = await client.post(
            "/v1/webhooks/email-events", json=body, headers={"x-amz-sns-message-type": "Notification"}
        )

    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert await suppressions(settings) == []
