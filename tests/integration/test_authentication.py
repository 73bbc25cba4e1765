"""authenticate() over plain values and a real PostgreSQL: each way a caller can fail, without HTTP."""

from __future__ import annotations

import time
import uuid

import msgspec
import pytest

from services.common.config import IntakeSettings
from services.common.db import Pool
from services.common.signatures import SignatureExpired, SignatureMismatch, timestamped_signature
from services.intake.authentication import (
    ANONYMOUS,
    PUBLIC_FORM,
    AuthenticationFailed,
    Credentials,
    LegacySignatureRefused,
    MalformedSignature,
    MissingClientId,
    MissingCredentials,
    ReplayedSignature,
    SigningNotConfigured,
    UnknownApiKey,
    UnknownClient,
    UnknownSigningKey,
    authenticate,
)
from services.intake.clients import ApiClient, legacy_signing_secret
from tests.support.intake import create_api_client, sign
from tests.support.platform import make_settings

pytestmark = pytest.mark.integration

BODY = b'{"email": "ada@example.com"}'
NOW = time.time()


@pytest.fixture
def settings(migrated_database_url: str) -> IntakeSettings:
    return make_settings(
        IntakeSettings, migrated_database_url, "127.0.0.1:9", "t", public_form_origins="https://www.example.com"
    )


@pytest.fixture
async def client(migrated_database_url: str) -> tuple[ApiClient, str]:
    return await create_api_client(migrated_database_url, "crm", ["leads:write"])


async def body() -> bytes:
    return BODY


def credentials(
    api_key: str | None = None, signature: str | None = None, client_id: str | None = None, origin: str | None = None
) -> Credentials:
    return Credentials(api_key=api_key, signature=signature, client_id=client_id, origin=origin, body=body)


def signed(
    settings: IntakeSettings, client: ApiClient, at: float = NOW, client_id: str | None = None, nonce: str | None = None
) -> Credentials:
    headers = sign(settings, client.id, BODY, at=at, nonce=nonce)
    return Credentials(
        api_key=None,
        signature=headers["X-Signature"],
        client_id=client_id or str(client.id),
        origin=None,
        body=body,
        method="POST",
        path="/v1/leads",
    )


def signed_v1(settings: IntakeSettings, client: ApiClient, at: float = NOW) -> Credentials:
    timestamp = str(int(at))
    signature = timestamped_signature(legacy_signing_secret(settings.hmac_secret, client.id), timestamp, BODY)
    return Credentials(
        api_key=None,
        signature=f"t={timestamp},v1={signature}",
        client_id=str(client.id),
        origin=None,
        body=body,
        method="POST",
        path="/v1/leads",
    )


async def test_an_api_key_authenticates_its_client(
    pool: Pool, settings: IntakeSettings, client: tuple[ApiClient, str]
) -> None:
    principal = await authenticate(pool, credentials(api_key=client[1]), settings, now=NOW)

    assert (principal.kind, principal.client_id, principal.scopes) == ("api_key", client[0].id, {"leads:write"})


async def test_a_signed_request_authenticates_once(
    pool: Pool, settings: IntakeSettings, client: tuple[ApiClient, str]
) -> None:
    principal = await authenticate(pool, signed(settings, client[0], nonce="n" * 16), settings, now=NOW)

    assert (principal.kind, principal.client_id) == ("signature", client[0].id)
    with pytest.raises(ReplayedSignature, match="used before"):
        await authenticate(pool, signed(settings, client[0], nonce="n" * 16), settings, now=NOW)


async def test_the_old_signature_scheme_is_refused_unless_compatibility_is_on(
    pool: Pool, settings: IntakeSettings, client: tuple[ApiClient, str]
) -> None:
    with pytest.raises(LegacySignatureRefused):
        await authenticate(pool, signed_v1(settings, client[0]), settings, now=NOW)

    compatible = msgspec.structs.replace(settings, signature_v1_compat=True)
    principal = await authenticate(pool, signed_v1(settings, client[0]), compatible, now=NOW)

    assert (principal.kind, principal.client_id) == ("signature", client[0].id)
    with pytest.raises(ReplayedSignature):
        await authenticate(pool, signed_v1(settings, client[0]), compatible, now=NOW)


async def test_without_signing_keys_signed_requests_are_refused(
    pool: Pool, settings: IntakeSettings, client: tuple[ApiClient, str]
) -> None:
    presented = signed(settings, client[0])

    with pytest.raises(SigningNotConfigured):
        await authenticate(pool, presented, msgspec.structs.replace(settings, request_signing_keys=""), now=NOW)


async def test_a_key_id_that_was_rotated_out_is_refused(
    pool: Pool, settings: IntakeSettings, client: tuple[ApiClient, str]
) -> None:
    presented = signed(settings, client[0])
    rotated = msgspec.structs.replace(settings, request_signing_keys=f"next:{'9f8e7d6c' * 8}")

    with pytest.raises(UnknownSigningKey):
        await authenticate(pool, presented, rotated, now=NOW)


async def test_a_public_form_and_a_disabled_auth_need_no_credentials(pool: Pool, settings: IntakeSettings) -> None:
    form = await authenticate(pool, credentials(origin="https://www.example.com/"), settings, now=NOW)
    disabled = await authenticate(pool, credentials(), msgspec.structs.replace(settings, auth_mode="disabled"), now=NOW)

    assert (form, disabled) == (PUBLIC_FORM, ANONYMOUS)


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("nothing", MissingCredentials),
        ("foreign-origin", MissingCredentials),
        ("unknown-key", UnknownApiKey),
        ("garbled-signature", MalformedSignature),
        ("no-client-id", MissingClientId),
        ("stale", SignatureExpired),
        ("other-body", SignatureMismatch),
        ("unknown-client", SignatureMismatch),
    ],
)
async def test_each_failure_is_its_own_domain_error(
    pool: Pool, settings: IntakeSettings, client: tuple[ApiClient, str], case: str, error: type[Exception]
) -> None:
    presented = {
        "nothing": credentials(),
        "foreign-origin": credentials(origin="https://evil.example.net"),
        "unknown-key": credentials(api_key="hw_0123456789ab_" + "x" * 43),
        "garbled-signature": credentials(signature="v1=deadbeef", client_id=str(client[0].id)),
        "no-client-id": credentials(signature=f"keyid=test-key,t={int(NOW)},nonce={'n' * 16},v2={'0' * 64}"),
        "stale": signed(settings, client[0], at=NOW - settings.signature_tolerance_s - 5),
        "other-body": credentials(
            signature=f"keyid=test-key,t={int(NOW)},nonce={'n' * 16},v2={'0' * 64}", client_id=str(client[0].id)
        ),
        # Signed with one client's secret, claimed for another id: the secret is per id, so no match.
        "unknown-client": signed(settings, client[0], client_id=str(uuid.uuid4())),
    }[case]

    with pytest.raises(error):
        await authenticate(pool, presented, settings, now=NOW)


async def test_a_signature_of_a_client_that_no_longer_exists_is_an_unknown_client(
    pool: Pool, settings: IntakeSettings, client: tuple[ApiClient, str]
) -> None:
    async with pool.connection() as conn:
        await conn.execute("UPDATE api_clients SET revoked_at = now() WHERE id = %s", (client[0].id,))

    with pytest.raises(UnknownClient):
        await authenticate(pool, signed(settings, client[0]), settings, now=NOW)


def test_every_authentication_failure_is_one_family() -> None:
    for kind in (
        MissingCredentials,
        UnknownApiKey,
        MalformedSignature,
        MissingClientId,
        UnknownClient,
        ReplayedSignature,
        LegacySignatureRefused,
        SigningNotConfigured,
        UnknownSigningKey,
    ):
        assert issubclass(kind, AuthenticationFailed)
