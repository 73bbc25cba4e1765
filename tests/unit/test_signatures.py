"""The one timestamped-HMAC verifier (services.common.signatures) and the generic webhook's use of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.signatures import (
    SignatureExpired,
    SignatureMismatch,
    SignatureTexts,
    canonical_query,
    canonical_request,
    request_signature,
    timestamped_signature,
    verify_timestamped_signature,
)
from services.intake.generic_webhook import (
    MalformedWebhookTimestamp,
    UnsignedWebhook,
    verify_generic_request,
)

SECRET = "s" * 40
BODY = b'{"events": []}'
NOW = 1_800_000_000.0
TEXTS = SignatureTexts(expired="more than {tolerance_s:g} s off", mismatch="no match")


def verify(timestamp: str, offered: list[str], body: bytes = BODY, secret: str = SECRET) -> None:
    verify_timestamped_signature(secret, timestamp, offered, body, tolerance_s=300, now=NOW, texts=TEXTS)


def test_a_recent_signature_of_the_body_verifies() -> None:
    timestamp = str(int(NOW) - 299)
    verify(timestamp, [timestamped_signature(SECRET, timestamp, BODY)])


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body_in_hex() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"1800000000." + BODY, hashlib.sha256).hexdigest()

    assert timestamped_signature(SECRET, 1_800_000_000, BODY) == expected
    assert timestamped_signature(SECRET, "1800000000", BODY) == expected


@pytest.mark.parametrize("offset", [-301, 301, 10**400], ids=["too-old", "in-the-future", "hundreds-of-digits"])
def test_a_timestamp_outside_the_tolerance_is_expired_with_the_adapters_words(offset: int) -> None:
    timestamp = str(int(NOW) + offset)

    with pytest.raises(SignatureExpired, match="more than 300 s off"):
        verify(timestamp, [timestamped_signature(SECRET, timestamp, BODY)])


@pytest.mark.parametrize("tamper", ["body", "secret", "timestamp", "nothing-offered"])
def test_a_signature_of_anything_else_is_a_mismatch(tamper: str) -> None:
    timestamp = str(int(NOW))
    signed_at = str(int(NOW) - 1) if tamper == "timestamp" else timestamp
    signature = timestamped_signature("t" * 40 if tamper == "secret" else SECRET, signed_at, BODY)
    body = BODY + b" " if tamper == "body" else BODY

    with pytest.raises(SignatureMismatch, match="no match"):
        verify(timestamp, [] if tamper == "nothing-offered" else [signature], body)


def test_any_one_of_several_offered_signatures_may_match_while_a_secret_rotates() -> None:
    timestamp = str(int(NOW))

    verify(timestamp, ["0" * 64, timestamped_signature(SECRET, timestamp, BODY)])


# --- the generic webhook's headers ---------------------------------------------------------------


def verify_webhook(timestamp: str | None, signatures: str | None) -> None:
    verify_generic_request(SECRET, timestamp, signatures, BODY, tolerance_s=300, now=NOW)


@pytest.mark.parametrize(("timestamp", "signatures"), [(None, "v1=00"), ("1", None), ("", ""), (None, None)])
def test_a_webhook_without_both_headers_is_unsigned(timestamp: str | None, signatures: str | None) -> None:
    with pytest.raises(UnsignedWebhook, match="Webhook-Timestamp and Webhook-Signature headers are required"):
        verify_webhook(timestamp, signatures)


@pytest.mark.parametrize("timestamp", ["now", "1.5", "0x10"])
def test_a_webhook_timestamp_that_is_not_unix_seconds_is_malformed(timestamp: str) -> None:
    with pytest.raises(MalformedWebhookTimestamp):
        verify_webhook(timestamp, "v1=00")


def test_a_webhook_signed_with_the_secret_verifies_among_other_values() -> None:
    timestamp = str(int(NOW))
    signature = timestamped_signature(SECRET, timestamp, BODY)

    verify_webhook(timestamp, f"v0=zz, v1={'a' * 64}, v1={signature}")


def test_a_stale_webhook_is_expired_and_a_forged_one_mismatched_in_the_webhooks_words() -> None:
    stale = str(int(NOW) - 3600)
    with pytest.raises(SignatureExpired, match="Webhook-Timestamp is too far from the current time"):
        verify_webhook(stale, f"v1={timestamped_signature(SECRET, stale, BODY)}")
    with pytest.raises(SignatureMismatch, match=r"^The signature does not match\.$"):
        verify_webhook(str(int(NOW)), "v1=" + "0" * 64)


def test_the_worked_example_of_docs_security_md() -> None:
    canonical = canonical_request(
        method="delete",
        path="/v1/leads",
        query="email=ada@example.com",
        body=b"",
        timestamp="1800000000",
        nonce="q2Zb7Hf0TQmW3x1kP9sLrA",
        client_id="6f1c2a9e-3b4d-4c5e-8f70-123456789abc",
        key_id="2026-11",
    )
    signature = request_signature("d6c1b0a1e5f24c3a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928", canonical)
    document = (Path(__file__).parents[2] / "docs" / "security.md").read_text()

    assert canonical.decode() in document
    assert signature == "79b055e589fea19dd98259ecd9e1a8bcadf439a81a4761be2959d2b0bda119cf"
    assert f"v2={signature}" in document


@pytest.mark.parametrize(
    ("query", "canonical"),
    [
        ("", ""),
        ("b=2&a=1", "a=1&b=2"),
        ("email=ada@example.com", "email=ada%40example.com"),
        ("q=a+b&q=a%20a", "q=a%20a&q=a%20b"),
        ("flag", "flag="),
    ],
)
def test_the_canonical_query_is_sorted_and_rfc3986_encoded(query: str, canonical: str) -> None:
    assert canonical_query(query) == canonical
