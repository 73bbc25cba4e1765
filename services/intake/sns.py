"""Amazon SES notifications delivered by SNS: signature verification and parsing.

SNS signs each message with an RSA key whose certificate it serves at ``SigningCertURL``. The
certificate is fetched over HTTPS — only from an ``sns.<region>.amazonaws.com`` host, never from a URL
an attacker chose — and cached. The fetcher is injectable: the tests (which cannot reach AWS) verify
real signatures made with a locally generated key and certificate.
"""

from __future__ import annotations

import asyncio
import base64
import re
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.intake.bodies import MalformedBody, decode_json
from services.intake.provider_events import AdapterNotConfigured, ProviderEvent, message_id_from_header

# Fetches the bytes at an https URL (certificates, subscription confirmations).
Fetcher = Callable[[str], Awaitable[bytes]]

_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
FETCH_TIMEOUT_S = 5.0
_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


class SnsRejected(Exception):
    """An SNS message that must not be trusted (bad signature, foreign topic, unexpected URL)."""


class SnsUnavailable(Exception):
    """SNS could not be reached to fetch a certificate or confirm a subscription (answer 503: SNS retries)."""


async def fetch_https(url: str) -> bytes:
    """The default fetcher: GET with a timeout, in a worker thread."""

    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 - checked https
            body: bytes = response.read(1_000_000)
            return body

    return await asyncio.to_thread(get)


def is_sns_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" and bool(parts.hostname) and _SNS_HOST.fullmatch(parts.hostname or "") is not None


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
    """Verifies SNS messages for the accepted topics; caches certificates by URL."""

    def __init__(self, topic_arns: list[str], fetch: Fetcher = fetch_https) -> None:
        self._topics = frozenset(topic_arns)
        self._fetch = fetch
        self._certs: dict[str, rsa.RSAPublicKey] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._topics)

    async def verify(self, message: dict[str, Any]) -> None:
        """Raise :class:`SnsRejected` unless the message is signed by SNS for an accepted topic."""
        if message.get("TopicArn") not in self._topics:
            raise SnsRejected("topic not accepted")
        version = str(message.get("SignatureVersion", ""))
        algorithm: hashes.HashAlgorithm
        if version == "1":
            algorithm = hashes.SHA1()  # noqa: S303 - SNS signature version 1 is SHA1withRSA
        elif version == "2":
            algorithm = hashes.SHA256()
        else:
            raise SnsRejected("unknown signature version")
        cert_url = str(message.get("SigningCertURL", ""))
        if not is_sns_url(cert_url) or not urlsplit(cert_url).path.endswith(".pem"):
            raise SnsRejected("signing certificate is not served by SNS")
        try:
            signature = _b64decode(str(message.get("Signature", "")))
            key = await self._key(cert_url)
            key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm)
        except (InvalidSignature, ValueError) as error:
            raise SnsRejected("bad signature") from error

    async def confirm_subscription(self, message: dict[str, Any]) -> None:
        """Confirm a verified SubscriptionConfirmation by visiting its SubscribeURL (an SNS URL only)."""
        url = str(message.get("SubscribeURL", ""))
        if not is_sns_url(url):
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
            self._certs[url] = key
        return self._certs[url]


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


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
    mail = body.get("mail") or {}
    headers = mail.get("commonHeaders") or {}
    message_id = message_id_from_header(headers.get("messageId"))
    events = []
    if kind == "Bounce":
        bounce = body.get("bounce") or {}
        permanent = bounce.get("bounceType") == "Permanent"
        for recipient in bounce.get("bouncedRecipients") or []:
            address = str(recipient.get("emailAddress", ""))
            detail = str(recipient.get("diagnosticCode") or bounce.get("bounceSubType") or "")
            events.append(
                ProviderEvent(f"{sns_message_id}/{address}", "bounced", address, permanent, detail, message_id)
            )
    elif kind == "Complaint":
        complaint = body.get("complaint") or {}
        for recipient in complaint.get("complainedRecipients") or []:
            address = str(recipient.get("emailAddress", ""))
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
