"""Amazon SES notifications delivered by SNS: signature verification and parsing.

SNS signs each message with an RSA key whose certificate it serves at ``SigningCertURL``. The
certificate is fetched over HTTPS only from a URL of exactly the shape SNS uses,
``https://sns.<region>.amazonaws.com[.cn]/SimpleNotificationService-<hex>.pem`` (not from any
``*.amazonaws.com`` host: ``sns.s3.amazonaws.com`` would be a public S3 bucket), and kept in a bounded
cache. ``SubscribeURL`` must be on such an SNS host too. A message older than ``SNS_MAX_AGE_S`` (or from
the future) is refused, and every refusal gets one answer: the reason is logged, never told to the
caller, so nobody can probe which topic ARNs are accepted. The fetcher is injectable: the tests (which
cannot reach AWS) verify real signatures made with a locally generated key and certificate.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.intake.bodies import MalformedBody, decode_json
from services.intake.provider_events import AdapterNotConfigured, ProviderEvent, message_id_from_header

# Fetches the bytes at an https URL (certificates, subscription confirmations).
Fetcher = Callable[[str], Awaitable[bytes]]

log = logging.getLogger(__name__)

# A region is letters-letters-digit (eu-west-1, us-gov-west-1, cn-north-1): never "s3" or "s3-website".
_SNS_HOST = re.compile(r"sns\.[a-z]{2}(-[a-z]+)+-[0-9]{1,2}\.amazonaws\.com(\.cn)?")
_CERTIFICATE_PATH = re.compile(r"/SimpleNotificationService-[0-9a-f]{16,64}\.pem")
FETCH_TIMEOUT_S = 5.0
# SNS rotates its signing certificate rarely; a handful of URLs is all a deployment ever sees.
MAX_CACHED_CERTIFICATES = 16
# How far a message's Timestamp may be ahead of this clock.
FUTURE_SKEW_S = 300.0
_SIGNED_STRING_FIELDS = ("Message", "MessageId", "Subject", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_ENVELOPE_STRING_FIELDS = ("SignatureVersion", "SigningCertURL", "Signature")
_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


class SnsRejected(Exception):
    """An SNS message that must not be trusted (bad signature, foreign topic, unexpected URL, stale).

    The message is the reason, for the log; the caller always gets the same answer."""


class SnsUnavailable(Exception):
    """SNS could not be reached to fetch a certificate or confirm a subscription (answer 503: SNS retries)."""


async def fetch_https(url: str) -> bytes:
    """The default fetcher: GET with a timeout, in a worker thread."""

    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 - checked https
            body: bytes = response.read(1_000_000)
            return body

    return await asyncio.to_thread(get)


def _is_sns_host(url: str) -> bool:
    """https, an SNS host and nothing else in the authority (no port, no user info)."""
    parts = urlsplit(url)
    return parts.scheme == "https" and _SNS_HOST.fullmatch(parts.netloc) is not None and not parts.fragment


def is_sns_certificate_url(url: str) -> bool:
    """``https://sns.<region>.amazonaws.com[.cn]/SimpleNotificationService-<hex>.pem``, exactly."""
    parts = urlsplit(url)
    return _is_sns_host(url) and _CERTIFICATE_PATH.fullmatch(parts.path) is not None and not parts.query


def is_sns_subscribe_url(url: str) -> bool:
    """``https://sns.<region>.amazonaws.com[.cn]/?Action=ConfirmSubscription&...``."""
    parts = urlsplit(url)
    return (
        _is_sns_host(url) and parts.path in ("", "/") and parse_qs(parts.query).get("Action") == ["ConfirmSubscription"]
    )


def string_to_sign(message: dict[str, Any]) -> bytes:
    """The canonical text SNS signs: selected fields as ``name\\nvalue\\n``, in a fixed order."""
    kind = message.get("Type")
    fields = _NOTIFICATION_FIELDS if kind == "Notification" else _CONFIRMATION_FIELDS
    parts = []
    for name in fields:
        if name in message and message[name] is not None:
            parts.append(f"{name}\n{message[name]}\n")
    return "".join(parts).encode()


class SnsVerifier:
    """Verifies SNS messages for the accepted topics; caches at most ``MAX_CACHED_CERTIFICATES``
    certificates by URL."""

    def __init__(
        self,
        topic_arns: list[str],
        fetch: Fetcher = fetch_https,
        *,
        max_age_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._topics = frozenset(topic_arns)
        self._fetch = fetch
        self._max_age_s = max_age_s
        self._clock = clock
        self._certs: dict[str, rsa.RSAPublicKey] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._topics)

    async def verify(self, message: dict[str, Any]) -> None:
        """Raise :class:`SnsRejected` unless the message is fresh, signed by SNS and for an accepted topic.

        The topic is checked last, after the signature: only a message SNS really signed can learn that
        its topic is not accepted, and the answer is the same as for every other refusal anyway."""
        try:
            await self._verify(message)
        except SnsRejected as error:
            log.warning("SNS message rejected", extra={"reason": str(error)})
            raise

    async def _verify(self, message: dict[str, Any]) -> None:
        for name in (*_SIGNED_STRING_FIELDS, *_ENVELOPE_STRING_FIELDS):
            if name in message and not isinstance(message[name], str):
                raise SnsRejected(f"{name} is not a string")
        version = message.get("SignatureVersion", "")
        algorithm: hashes.HashAlgorithm
        if version == "1":
            algorithm = hashes.SHA1()  # noqa: S303 - SNS signature version 1 is SHA1withRSA
        elif version == "2":
            algorithm = hashes.SHA256()
        else:
            raise SnsRejected("unknown signature version")
        cert_url = message.get("SigningCertURL", "")
        if not is_sns_certificate_url(cert_url):
            raise SnsRejected("signing certificate URL is not an SNS certificate URL")
        self._check_fresh(message.get("Timestamp", ""))
        try:
            signature = _b64decode(message.get("Signature", ""))
            key = await self._key(cert_url)
            key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm)
        except (InvalidSignature, ValueError) as error:
            raise SnsRejected("bad signature") from error
        if message.get("TopicArn") not in self._topics:
            raise SnsRejected("topic not accepted")

    def _check_fresh(self, timestamp: str) -> None:
        try:
            sent = datetime.fromisoformat(timestamp).timestamp()
        except (ValueError, OverflowError, OSError):
            raise SnsRejected("Timestamp is not an ISO 8601 time") from None
        now = self._clock()
        if not now - self._max_age_s <= sent <= now + FUTURE_SKEW_S:
            raise SnsRejected("Timestamp is too old or in the future")

    async def confirm_subscription(self, message: dict[str, Any]) -> None:
        """Confirm a verified SubscriptionConfirmation by visiting its SubscribeURL (an SNS URL only)."""
        url = str(message.get("SubscribeURL", ""))
        if not is_sns_subscribe_url(url):
            log.warning("SNS message rejected", extra={"reason": "SubscribeURL is not an SNS URL"})
            raise SnsRejected("SubscribeURL is not an SNS URL")
        try:
            await self._fetch(url)
        except OSError as error:
            raise SnsUnavailable(str(error)) from error

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        if url not in self._certs:
            try:
                pem = await self._fetch(url)
            except OSError as error:
                raise SnsUnavailable(str(error)) from error
            key = x509.load_pem_x509_certificate(pem).public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise SnsRejected("signing certificate has no RSA key")
            while len(self._certs) >= MAX_CACHED_CERTIFICATES:
                del self._certs[next(iter(self._certs))]
            self._certs[url] = key
        return self._certs[url]


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def ses_events(notification: str, sns_message_id: str) -> list[ProviderEvent]:
    """The bounces and complaints in an SES notification (the ``Message`` of an SNS Notification).

    Both SES formats are understood: notifications (``notificationType``) and event publishing
    (``eventType``). Deliveries and other types yield nothing.
    """
    try:
        body = msgspec.json.decode(notification)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return []
    if not isinstance(body, dict):
        return []
    kind = body.get("notificationType") or body.get("eventType")
    headers = _object(_object(body.get("mail")).get("commonHeaders"))
    message_id = message_id_from_header(_text(headers.get("messageId")))
    events = []
    if kind == "Bounce":
        bounce = _object(body.get("bounce"))
        permanent = bounce.get("bounceType") == "Permanent"
        for recipient in map(_object, _list(bounce.get("bouncedRecipients"))):
            if not (address := _text(recipient.get("emailAddress")) or ""):
                continue
            detail = str(recipient.get("diagnosticCode") or bounce.get("bounceSubType") or "")
            events.append(
                ProviderEvent(f"{sns_message_id}/{address}", "bounced", address, permanent, detail, message_id)
            )
    elif kind == "Complaint":
        complaint = _object(body.get("complaint"))
        for recipient in map(_object, _list(complaint.get("complainedRecipients"))):
            if not (address := _text(recipient.get("emailAddress")) or ""):
                continue
            detail = str(complaint.get("complaintFeedbackType") or "complaint")
            events.append(ProviderEvent(f"{sns_message_id}/{address}", "complained", address, True, detail, message_id))
    return events


async def receive_sns(verifier: SnsVerifier, body: bytes) -> list[ProviderEvent]:
    """The bounces and complaints of an SNS request ``body``, verified; a subscription confirmation is
    confirmed (and has none). Raises :class:`AdapterNotConfigured`, ``MalformedBody``,
    :class:`SnsRejected` or :class:`SnsUnavailable`."""
    if not verifier.enabled:
        raise AdapterNotConfigured("The SES/SNS adapter is not configured (SNS_TOPIC_ARNS).")
    message = decode_json(body)
    if not isinstance(message, dict):
        raise MalformedBody("The body must be an SNS message (a JSON object).")
    await verifier.verify(message)
    if message.get("Type") == "SubscriptionConfirmation":
        await verifier.confirm_subscription(message)
        return []
    if message.get("Type") != "Notification":
        return []
    return ses_events(str(message.get("Message", "")), str(message.get("MessageId", "")))
