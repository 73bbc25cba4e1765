"""Outgoing webhooks cannot be turned against the platform's network: redirects are not followed,
loopback/private/link-local/metadata addresses are refused at delivery (also when a name resolves to
one: DNS rebinding), response bodies are kept to 1 KiB, and a slow endpoint times out. Real HTTP
servers on loopback; name resolution is the one thing played by the test, through the client's
injectable resolver (``test_resolver`` below), because this machine's DNS is not ours to change."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg_pool
import pytest

from services.common.config import DatabaseSettings
from services.common.db import Connection, open_pool, transaction
from services.common.webhook_events import WebhookEvent
from services.common.webhook_secrets import encrypt_secret, new_signing_secret
from services.outgoing_webhooks.deliverer import DeliveryRules, deliver_due
from services.outgoing_webhooks.fanout import fan_out
from services.outgoing_webhooks.safe_http import MAX_BODY_BYTES, AttemptFailed, SafeHttpClient
from tests.support.intake import running_intake
from tests.support.platform import fetch_all
from tests.support.webhook_receiver import Answer, WebhookReceiver, webhook_receiver

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]
HMAC = "webhook-attack-tests-" + uuid.uuid4().hex + uuid.uuid4().hex
BODY = b'{"type":"lead.accepted","timestamp":"2026-11-30T04:30:00.000Z","data":{}}'


def test_resolver(
    answers: dict[str, list[list[str]]], calls: list[str]
) -> Callable[[str, int], asyncio.Future[list[str]]]:
    """A resolver the test controls: each lookup of a name pops its next answer (the last one repeats)."""

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        queue = answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return resolve  # type: ignore[return-value]


test_resolver.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def strict_client(**kwargs: object) -> SafeHttpClient:
    return SafeHttpClient(allow_private_networks=False, timeout_s=5.0, **kwargs)  # type: ignore[arg-type]


# --- redirects ------------------------------------------------------------------------------------


async def test_a_redirect_is_not_followed(receiver: WebhookReceiver) -> None:
    async with webhook_receiver() as elsewhere, SafeHttpClient(allow_private_networks=True) as client:
        receiver.default = Answer(status=307, headers={"Location": elsewhere.url + "/stolen"})
        answer = await client.post(receiver.url + "/hook", BODY, {})
        assert answer.status == 307
        assert not answer.succeeded
        assert elsewhere.received == []


# --- addresses refused at delivery ----------------------------------------------------------------


async def test_loopback_is_refused_at_delivery_without_connecting(receiver: WebhookReceiver) -> None:
    async with strict_client() as client:
        with pytest.raises(AttemptFailed, match="loopback") as refused:
            await client.post(receiver.url + "/hook", BODY, {})
    assert refused.value.kind == "refused"
    assert receiver.received == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "link-local"),
        ("http://10.0.0.1:8080/hook", "not a public address"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "not a public address"),
        ("http://[::ffff:127.0.0.1]:9/hook", "loopback"),
    ],
)
async def test_metadata_and_private_addresses_are_refused_at_delivery(url: str, reason: str) -> None:
    async with strict_client() as client:
        with pytest.raises(AttemptFailed, match=reason) as refused:
            await client.post(url, BODY, {})
    assert refused.value.kind == "refused"


async def test_a_name_that_resolves_to_a_private_address_at_delivery_is_refused(receiver: WebhookReceiver) -> None:
    """The rebinding attack: the name passed registration (names are not resolved then), and at delivery
    it resolves to the loopback address where the receiver listens; nothing reaches it."""
    port = receiver.url.rsplit(":", 1)[1]
    calls: list[str] = []
    resolver = test_resolver({"hooks.rebinding.test": [["127.0.0.1"]]}, calls)
    async with strict_client(resolver=resolver) as client:
        with pytest.raises(AttemptFailed, match=r"hooks\.rebinding\.test resolves to 127\.0\.0\.1"):
            await client.post(f"http://hooks.rebinding.test:{port}/hook", BODY, {})
    assert receiver.received == []
    assert calls == ["hooks.rebinding.test"]


async def test_one_private_address_among_public_ones_refuses_the_name() -> None:
    resolver = test_resolver({"hooks.mixed.test": [["93.184.215.14", "169.254.169.254"]]}, [])
    async with strict_client(resolver=resolver) as client:
        with pytest.raises(AttemptFailed, match=r"169\.254\.169\.254"):
            await client.post("http://hooks.mixed.test/hook", BODY, {})


async def test_the_name_is_resolved_once_per_attempt_and_the_connection_goes_to_that_address(
    receiver: WebhookReceiver,
) -> None:
    """What defeats rebinding: the address checked is the address connected to. The second answer
    (where nothing listens) would only be used by a client that resolved again; the name travels as
    the Host header (and, over TLS, as the server name)."""
    port = receiver.url.rsplit(":", 1)[1]
    calls: list[str] = []
    resolver = test_resolver({"hooks.customer.test": [["127.0.0.1"], ["127.0.0.2"]]}, calls)
    async with SafeHttpClient(allow_private_networks=True, resolver=resolver) as client:
        answer = await client.post(f"http://hooks.customer.test:{port}/hook", BODY, {"webhook-id": "x"})
    assert answer.status == 200
    assert calls == ["hooks.customer.test"]
    [request] = receiver.received
    assert request.headers["host"] == f"hooks.customer.test:{port}"


async def test_a_refused_delivery_is_recorded_and_retried_later(migrated_database_url: str) -> None:
    pool: Pool = await open_pool(DatabaseSettings(database_url=migrated_database_url))
    try:
        endpoint = uuid.uuid4()
        async with transaction(pool) as conn:
            # Registered while private networks were allowed; the delivery checks again.
            await conn.execute(
                """INSERT INTO webhook_endpoints (id, url, events, secret_ciphertext)
                   VALUES (%s, 'http://169.254.169.254/hook', ARRAY['lead.accepted'], %s)""",
                (endpoint, encrypt_secret(new_signing_secret(), endpoint, HMAC)),
            )
            await fan_out(conn, [WebhookEvent(id=uuid.uuid4(), type="lead.accepted", occurred_at=_now(), data={})])
        rules = DeliveryRules(batch_size=10, lease_s=60.0, schedule=[300.0], hmac_secrets=[HMAC])
        async with strict_client() as client:
            assert await deliver_due(pool, client, rules) == 1
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT * FROM webhook_deliveries WHERE endpoint_id = %s", (endpoint,))
            [row] = await cursor.fetchall()
        assert row["status"] == "pending"
        assert row["response_status"] is None
        assert str(row["last_error"]).startswith("refused: 169.254.169.254 resolves to")
    finally:
        await pool.close()


def _now() -> datetime:
    from services.common.clock import utcnow

    return utcnow()


# --- what the answer may cost -----------------------------------------------------------------------


async def test_a_huge_response_body_is_not_kept_beyond_1_kib(receiver: WebhookReceiver) -> None:
    receiver.default = Answer(status=200, body=b"x" * (8 * 1024 * 1024))
    async with SafeHttpClient(allow_private_networks=True) as client:
        answer = await client.post(receiver.url, BODY, {})
    assert answer.status == 200
    assert len(answer.body) == MAX_BODY_BYTES


async def test_a_slow_endpoint_times_out(receiver: WebhookReceiver) -> None:
    receiver.default = Answer(status=200, delay_s=30.0)
    async with SafeHttpClient(allow_private_networks=True, timeout_s=1.0) as client:
        with pytest.raises(AttemptFailed, match="no answer within 1 s") as failed:
            await client.post(receiver.url, BODY, {})
    assert failed.value.kind == "error"


@contextlib.asynccontextmanager
async def trickling_server() -> AsyncIterator[str]:
    """Answers at once, then sends its body one byte every 0.2 s, for a minute."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n")
            for _ in range(300):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.2)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()


async def test_an_endpoint_trickling_its_answer_is_cut_off_at_the_timeout() -> None:
    """Each read is fast (httpx's per-read timeout never fires: the answer would complete after a
    minute), so only the bound on the whole attempt stops it."""
    async with trickling_server() as url, SafeHttpClient(allow_private_networks=True, timeout_s=1.0) as client:
        with pytest.raises(AttemptFailed, match="no answer within"):
            await client.post(url, BODY, {})


async def test_a_huge_response_body_is_stored_as_its_first_kib_only(
    migrated_database_url: str, receiver: WebhookReceiver
) -> None:
    receiver.default = Answer(status=500, body="é".encode() * (4 * 1024 * 1024))
    pool: Pool = await open_pool(DatabaseSettings(database_url=migrated_database_url))
    try:
        endpoint = uuid.uuid4()
        async with transaction(pool) as conn:
            await conn.execute(
                "INSERT INTO webhook_endpoints (id, url, events, secret_ciphertext) VALUES (%s, %s, %s, %s)",
                (endpoint, receiver.url, ["lead.accepted"], encrypt_secret(new_signing_secret(), endpoint, HMAC)),
            )
            await fan_out(conn, [WebhookEvent(id=uuid.uuid4(), type="lead.accepted", occurred_at=_now(), data={})])
        rules = DeliveryRules(batch_size=10, lease_s=60.0, schedule=[300.0], hmac_secrets=[HMAC])
        async with SafeHttpClient(allow_private_networks=True) as client:
            await deliver_due(pool, client, rules)
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT response_status, octet_length(response_body) AS size FROM webhook_deliveries"
                " WHERE endpoint_id = %s",
                (endpoint,),
            )
            [row] = await cursor.fetchall()
        assert row["response_status"] == 500
        assert 0 < int(row["size"]) <= 1024  # type: ignore[call-overload]
    finally:
        await pool.close()


# --- TLS: connected by address, verified by name ----------------------------------------------------


def _certificate_for(name: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``name`` (PEM) and its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


@contextlib.asynccontextmanager
async def tls_receiver(name: str, tmp_path: Path) -> AsyncIterator[tuple[int, ssl.SSLContext, list[str]]]:
    """An HTTPS server on 127.0.0.1 presenting a certificate for ``name``; yields its port, a client
    context trusting that certificate, and the server names (SNI) clients asked for."""
    certificate, key = _certificate_for(name)
    (tmp_path / "cert.pem").write_bytes(certificate)
    (tmp_path / "key.pem").write_bytes(key)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    asked: list[str] = []
    server_context.sni_callback = lambda _sock, server_name, _ctx: asked.append(str(server_name))  # type: ignore[assignment,func-returns-value]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    client_context = ssl.create_default_context(cadata=certificate.decode())
    try:
        yield server.sockets[0].getsockname()[1], client_context, asked
    finally:
        server.close()


async def test_https_connects_to_the_checked_address_with_the_name_as_sni_and_certificate_name(
    tmp_path: Path,
) -> None:
    resolver = test_resolver({"hooks.customer.test": [["127.0.0.1"]]}, [])
    async with (
        tls_receiver("hooks.customer.test", tmp_path) as (port, trusted, asked),
        SafeHttpClient(allow_private_networks=True, resolver=resolver, tls=trusted) as client,
    ):
        answer = await client.post(f"https://hooks.customer.test:{port}/hook", BODY, {})
    assert answer.status == 204
    assert asked == ["hooks.customer.test"]


async def test_https_to_a_name_the_certificate_does_not_name_fails(tmp_path: Path) -> None:
    resolver = test_resolver({"hooks.attacker.test": [["127.0.0.1"]]}, [])
    async with (
        tls_receiver("hooks.customer.test", tmp_path) as (port, trusted, _),
        SafeHttpClient(allow_private_networks=True, resolver=resolver, tls=trusted) as client,
    ):
        with pytest.raises(AttemptFailed, match=r"CERTIFICATE_VERIFY_FAILED|certificate|hostname"):
            await client.post(f"https://hooks.attacker.test:{port}/hook", BODY, {})


# --- updating an endpoint ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.20.30.40/hook",
        "http://[::1]/hook",
    ],
)
async def test_an_update_to_a_private_or_metadata_url_is_refused_like_a_registration(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str, url: str
) -> None:
    async with running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix) as intake:
        created = await intake.http.post(
            "/v1/webhook-endpoints", json={"url": "https://hooks.example.com/a", "events": ["lead.accepted"]}
        )
        assert created.status_code == 201, created.text
        [before] = await fetch_all(migrated_database_url, "SELECT * FROM webhook_endpoints")
        response = await intake.http.patch(f"/v1/webhook-endpoints/{created.json()['id']}", json={"url": url})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    [error] = response.json()["errors"]
    assert error["field"] == "/url"
    assert await fetch_all(migrated_database_url, "SELECT * FROM webhook_endpoints") == [before]
