"""Signed link tokens: purpose-bound, tamper-evident, verifiable across one key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest

from services.common.tokens import InvalidToken, Purpose, sign_token, verify_token

SECRET = "3f1b9c2e7d4a6f8b0c1e2d3a4b5c6d7e8f9a0b1c"
PREVIOUS = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d"
MESSAGE = uuid.UUID("6f1c2b3a-4d5e-4f60-8a9b-0c1d2e3f4a5b")


def test_a_token_verifies_and_yields_its_message_id() -> None:
    token = sign_token(SECRET, Purpose.UNSUBSCRIBE, MESSAGE)

    verified = verify_token(token, Purpose.UNSUBSCRIBE, [SECRET])

    assert (verified.message_id, verified.purpose, verified.url) == (MESSAGE, Purpose.UNSUBSCRIBE, None)


def test_a_click_token_carries_the_url_it_may_redirect_to() -> None:
    token = sign_token(SECRET, Purpose.CLICK, MESSAGE, "https://example.com/a?b=c&d=é")

    assert verify_token(token, Purpose.CLICK, [SECRET]).url == "https://example.com/a?b=c&d=é"


def test_tokens_are_url_safe() -> None:
    token = sign_token(SECRET, Purpose.CLICK, MESSAGE, "https://example.com/?q=a b")

    assert all(c.isalnum() or c in "-_." for c in token)


@pytest.mark.parametrize("purpose", [Purpose.OPEN, Purpose.CLICK])
def test_a_token_for_another_purpose_is_refused(purpose: Purpose) -> None:
    token = sign_token(SECRET, Purpose.OPEN, MESSAGE)

    if purpose is not Purpose.OPEN:
        with pytest.raises(InvalidToken):
            verify_token(token, purpose, [SECRET])
    with pytest.raises(InvalidToken):
        verify_token(token, Purpose.UNSUBSCRIBE, [SECRET])


def test_a_token_signed_with_the_previous_secret_verifies_during_rotation() -> None:
    token = sign_token(PREVIOUS, Purpose.UNSUBSCRIBE, MESSAGE)

    assert verify_token(token, Purpose.UNSUBSCRIBE, [SECRET, PREVIOUS]).message_id == MESSAGE
    with pytest.raises(InvalidToken):
        verify_token(token, Purpose.UNSUBSCRIBE, [SECRET, ""])


def tampered_variants(token: str) -> list[str]:
    payload, _, mac = token.partition(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    return [
        flipped + "." + mac,  # payload changed
        payload + "." + mac[:-1] + ("A" if mac[-1] != "A" else "B"),  # signature changed
        token[:-5],  # truncated
        payload,  # signature removed
        payload + ".",  # empty signature
        "." + mac,  # empty payload
        "",
        "not-a-token",
        token + "x",
        "!!!." + mac,  # not base64
    ]


def test_tampered_or_truncated_tokens_are_refused() -> None:
    token = sign_token(SECRET, Purpose.CLICK, MESSAGE, "https://example.com/")

    for variant in tampered_variants(token):
        with pytest.raises(InvalidToken):
            verify_token(variant, Purpose.CLICK, [SECRET])


def test_a_click_token_cannot_be_rebound_to_another_url() -> None:
    token = sign_token(SECRET, Purpose.CLICK, MESSAGE, "https://example.com/")
    other = sign_token(SECRET, Purpose.CLICK, MESSAGE, "https://evil.example/")

    forged = other.partition(".")[0] + "." + token.partition(".")[2]  # evil URL, genuine signature

    with pytest.raises(InvalidToken):
        verify_token(forged, Purpose.CLICK, [SECRET])


def test_urls_are_bound_into_click_tokens_only() -> None:
    with pytest.raises(ValueError, match="click"):
        sign_token(SECRET, Purpose.OPEN, MESSAGE, "https://example.com/")
    with pytest.raises(ValueError, match="click"):
        sign_token(SECRET, Purpose.CLICK, MESSAGE)


def test_a_non_canonical_spelling_of_a_valid_token_is_refused() -> None:
    token = sign_token(SECRET, Purpose.UNSUBSCRIBE, MESSAGE)
    payload, _, mac = token.partition(".")
    # 32 bytes of MAC are 43 base64 characters; the last one carries 2 spare bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(mac[-1])
    same_bits = alphabet[index ^ 1]

    with pytest.raises(InvalidToken):
        verify_token(f"{payload}.{mac[:-1]}{same_bits}", Purpose.UNSUBSCRIBE, [SECRET])


def test_tokens_signed_under_several_secrets_in_turn_each_carry_their_own_secrets_mac() -> None:
    # The keyed HMAC is cached per secret and copied per token: no secret's key or earlier payload may
    # leak into another token.
    signed = [
        (secret, url, sign_token(secret, Purpose.CLICK, MESSAGE, url))
        for secret in (SECRET, PREVIOUS, SECRET, PREVIOUS)
        for url in ("https://example.com/a", "https://example.com/b")
    ]

    for secret, url, token in signed:
        payload = bytes([1]) + b"c" + MESSAGE.bytes + url.encode()
        expected = hmac.new(secret.encode(), b"healingwork-link-token\x00" + payload, hashlib.sha256).digest()
        assert token.split(".")[1] == base64.urlsafe_b64encode(expected).rstrip(b"=").decode()
        assert verify_token(token, Purpose.CLICK, [secret]).url == url
        other = PREVIOUS if secret == SECRET else SECRET
        with pytest.raises(InvalidToken):
            verify_token(token, Purpose.CLICK, [other])
