"""The unauthenticated write routes under abuse (issue 15, item 4), over real HTTP and PostgreSQL:
SNS messages from the wrong place or time, hostile SNS bodies, floods of webhook requests and of
opens and clicks of one valid token. Each test performs the attack."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.common.config import IntakeSettings
from services.common.tokens import Purpose, sign_token
from services.intake.sns import MAX_CACHED_CERTIFICATES, SnsRejected, SnsVerifier, ses_events
from tests.integration.test_tracking import BROWSER, events, sent_message
from tests.integration.test_webhooks import CERT_PEM, CERT_URL, TOPIC_ARN, FakeAws, ses_bounce, sns_message
from tests.support.platform import apply_examples, make_settings, serve_intake

pytestmark = pytest.mark.integration

SNS = {"x-amz-sns-message-type": "Notification"}


@pytest.fixture
async def edge(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, IntakeSettings, FakeAws]]:
    await apply_examples(migrated_database_url)
    settings = make_settings(
        IntakeSettings,
        migrated_database_url,
        kafka_bootstrap_servers,
        topic_prefix,
        sns_topic_arns=TOPIC_ARN,
        webhook_rate_limit_per_minute=5,
        tracking_rate_limit_per_minute=4,
    )
    aws = FakeAws()
    async with (
        serve_intake(settings, sns_fetch=aws.fetch) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):
        yield client, settings, aws


def sns_time(offset_s: float) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset_s)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- SNS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://sns.s3.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem",  # a public S3 bucket host
        "https://sns.eu-west-1.amazonaws.com/any-bucket/evil.pem",
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem?x=1",
        "https://sns.eu-west-1.amazonaws.com:8443/SimpleNotificationService-0123456789abcdef.pem",
        "https://user@sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem",
        "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-0123456789abcdef.pem",
    ],
)
async def test_a_certificate_url_off_the_sns_pattern_is_never_fetched(
    edge: tuple[httpx.AsyncClient, IntakeSettings, FakeAws], cert_url: str
) -> None:
    client, _, aws = edge
    body = sns_message("Notification", ses_bounce("grace@example.com", None), SigningCertURL=cert_url)

    response = await client.post("/v1/webhooks/email-events", json=body, headers=SNS)

    assert response.status_code == 401
    assert aws.fetched == []


async def test_a_subscribe_url_off_the_sns_hosts_is_never_visited(
    edge: tuple[httpx.AsyncClient, IntakeSettings, FakeAws],
) -> None:
    client, _, aws = edge
    body = sns_message(
        "SubscriptionConfirmation", "confirm", SubscribeURL="https://sns.s3.amazonaws.com/?Action=ConfirmSubscription"
    )

    response = await client.post(
        "/v1/webhooks/email-events", json=body, headers={"x-amz-sns-message-type": "SubscriptionConfirmation"}
    )

    assert response.status_code == 401
    assert aws.fetched == [CERT_URL]  # the certificate, to verify the signature; the SubscribeURL never


@pytest.mark.parametrize("offset_s", [-7200, 3600])
async def test_a_stale_or_future_sns_message_is_refused(
    edge: tuple[httpx.AsyncClient, IntakeSettings, FakeAws], offset_s: float
) -> None:
    client, settings, _ = edge
    message_id = await sent_message(settings.database_url)
    body = sns_message("Notification", ses_bounce("grace@example.com", message_id), Timestamp=sns_time(offset_s))

    response = await client.post("/v1/webhooks/email-events", json=body, headers=SNS)

    assert response.status_code == 401
    assert await events(settings) == []


async def test_every_sns_refusal_gets_the_same_answer(edge: tuple[httpx.AsyncClient, IntakeSettings, FakeAws]) -> None:
    client, _, _ = edge
    foreign_topic = sns_message("Notification", "{}", TopicArn="arn:aws:sns:eu-west-1:999999999999:other")
    tampered = sns_message("Notification", "{}")
    tampered["Message"] = "{ }"
    stale = sns_message("Notification", "{}", Timestamp=sns_time(-7200))

    answers = [
        await client.post("/v1/webhooks/email-events", json=body, headers=SNS)
        for body in (foreign_topic, tampered, stale)
    ]

    assert {(a.status_code, a.json()["detail"]) for a in answers} == {(401, "The SNS message is not trusted.")}


@pytest.mark.parametrize(
    "body",
    [
        {"Type": "Notification", "TopicArn": []},
        {"Type": "Notification", "TopicArn": {"a": 1}, "SignatureVersion": "1"},
        {"Type": ["Notification"], "TopicArn": TOPIC_ARN},
        {"Type": "Notification", "TopicArn": TOPIC_ARN, "SignatureVersion": 1},
        {"Type": "Notification", "TopicArn": TOPIC_ARN, "SignatureVersion": "1", "SigningCertURL": ["x"]},
        {"Type": "Notification", "TopicArn": TOPIC_ARN, "SignatureVersion": "1", "Timestamp": 10**400},
        {"Type": "Notification", "TopicArn": TOPIC_ARN, "SignatureVersion": "1", "Timestamp": "99999-01-01T00:00:00Z"},
        {"Type": "Notification", "TopicArn": TOPIC_ARN, "SignatureVersion": "2", "Message": {"x": 1}},
        {"Type": "Notification", "TopicArn": TOPIC_ARN, "SignatureVersion": "2", "Signature": None},
    ],
)
async def test_hostile_sns_bodies_are_a_401_never_a_500(
    edge: tuple[httpx.AsyncClient, IntakeSettings, FakeAws], body: dict[str, Any]
) -> None:
    client, _, _ = edge

    response = await client.post("/v1/webhooks/email-events", json=body, headers=SNS)

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    "payload",
    [
        '{"notificationType": "Bounce", "bounce": [1], "mail": "x"}',
        '{"notificationType": "Bounce", "bounce": {"bouncedRecipients": [1, "x", null]}}',
        '{"notificationType": "Complaint", "complaint": {"complainedRecipients": {"a": 1}}, "mail": 3}',
        '{"notificationType": "Complaint", "complaint": {"complainedRecipients": [{"emailAddress": 5}]}}',
        '{"eventType": "Bounce", "bounce": {"bouncedRecipients": "all"}, "mail": {"commonHeaders": {"messageId": 7}}}',
    ],
)
def test_a_hostile_ses_payload_yields_no_events(payload: str) -> None:
    # SNS signs what SES sent: the payload is trusted to come from AWS, not to have the documented shape.
    assert ses_events(payload, "sns-id") == []


async def test_the_certificate_cache_is_bounded() -> None:
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return CERT_PEM

    verifier = SnsVerifier([TOPIC_ARN], fetch)
    urls = [
        f"https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-{n:032x}.pem"
        for n in range(MAX_CACHED_CERTIFICATES + 4)
    ]
    for url in urls:
        await verifier.verify(sns_message("Notification", "{}", SigningCertURL=url))
    await verifier.verify(sns_message("Notification", "{}", SigningCertURL=urls[-1]))  # cached
    await verifier.verify(sns_message("Notification", "{}", SigningCertURL=urls[0]))  # evicted: fetched again

    assert fetched == [*urls, urls[0]]


async def test_an_unknown_topic_is_refused_only_after_the_signature() -> None:
    aws = FakeAws()
    verifier = SnsVerifier([TOPIC_ARN], aws.fetch)
    forged = sns_message("Notification", "{}", TopicArn="arn:aws:sns:eu-west-1:999999999999:other")
    forged["Signature"] = "AAAA"

    with pytest.raises(SnsRejected, match="bad signature"):
        await verifier.verify(forged)


# --- rate limits ----------------------------------------------------------------------------------


async def test_the_webhook_is_rate_limited_per_client_ip_before_any_verification(
    edge: tuple[httpx.AsyncClient, IntakeSettings, FakeAws],
) -> None:
    client, settings, aws = edge
    body = sns_message("Notification", ses_bounce("grace@example.com", None))

    answers = [await client.post("/v1/webhooks/email-events", json=body, headers=SNS) for _ in range(8)]

    statuses = [a.status_code for a in answers]
    assert statuses[: settings.webhook_rate_limit_per_minute] == [200] * settings.webhook_rate_limit_per_minute
    assert set(statuses[settings.webhook_rate_limit_per_minute :]) == {429}
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert len(aws.fetched) == 1  # the certificate, once: refused requests fetched nothing


async def test_repeated_opens_of_one_message_within_the_window_are_one_event(
    edge: tuple[httpx.AsyncClient, IntakeSettings, FakeAws],
) -> None:
    client, settings, _ = edge
    message_id = await sent_message(settings.database_url)
    token = sign_token(settings.hmac_secret, Purpose.OPEN, message_id)

    answers = [await client.get(f"/t/o/{token}", headers={"User-Agent": BROWSER}) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [(e["type"], e["automated"]) for e in await events(settings)] == [("opened", False)]


async def test_repeated_clicks_are_one_event_per_url_and_per_kind_of_visitor(
    edge: tuple[httpx.AsyncClient, IntakeSettings, FakeAws],
) -> None:
    client, settings, _ = edge
    message_id = await sent_message(settings.database_url)
    first = sign_token(settings.hmac_secret, Purpose.CLICK, message_id, "https://example.com/a")
    second = sign_token(settings.hmac_secret, Purpose.CLICK, message_id, "https://example.com/b")

    await client.get(f"/t/c/{first}", headers={"User-Agent": BROWSER})
    await client.get(f"/t/c/{first}", headers={"User-Agent": BROWSER})
    await client.head(f"/t/c/{first}")  # a link scanner: recorded apart, as automated
    await client.get(f"/t/c/{second}", headers={"User-Agent": BROWSER})

    recorded = [(e["detail"], e["automated"]) for e in await events(settings)]
    assert sorted(recorded) == [
        ("https://example.com/a", False),
        ("https://example.com/a", True),
        ("https://example.com/b", False),
    ]


async def test_one_token_cannot_insert_unbounded_rows(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str
) -> None:
    await apply_examples(migrated_database_url)
    # A window so short every request is a new one: only the per-IP limit bounds the rows.
    settings = make_settings(
        IntakeSettings,
        migrated_database_url,
        kafka_bootstrap_servers,
        topic_prefix,
        tracking_rate_limit_per_minute=4,
        tracking_dedupe_window_s=0.000001,
    )
    message_id = await sent_message(settings.database_url)
    token = sign_token(settings.hmac_secret, Purpose.OPEN, message_id)
    async with serve_intake(settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        answers = [await client.get(f"/t/o/{token}", headers={"User-Agent": BROWSER}) for _ in range(12)]

    assert {a.status_code for a in answers} == {200}  # everyone still gets the pixel
    assert all(a.content.startswith(b"GIF89a") for a in answers)
    assert len(await events(settings)) == 4
