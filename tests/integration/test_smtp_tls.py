"""SMTP credentials never cross the network in clear (issue 15, item 3), against real SMTP servers.

The attacker is a man in the middle that strips STARTTLS from the server's EHLO answer and would
gladly accept AUTH PLAIN: a raw asyncio SMTP server here, recording every byte it receives. The
honest server is aiosmtpd with STARTTLS (a locally generated certificate, trusted through
SSL_CERT_FILE) that refuses AUTH before TLS.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg_pool
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.common.config import DispatcherSettings
from services.common.db import Connection, open_pool
from services.dispatcher.dispatch import Dispatcher
from services.dispatcher.smtp import SendError, SmtpConnection, SmtpPool, SmtpTarget
from tests.integration.test_dispatch import _message_row, _queued_message
from tests.support.platform import apply_examples, free_port, make_settings

pytestmark = pytest.mark.integration

USER, PASSWORD = "mailer", "s3cret-password"
AUTH_PLAIN = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


class StrippingServer:
    """An SMTP server as a man in the middle presents it: no STARTTLS in EHLO, AUTH gladly accepted.
    ``received`` holds every byte every client sent."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> StrippingServer:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail.example.com ESMTP\r\n")
        in_data = False
        try:
            while line := await reader.readline():
                self.received += line
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        writer.write(b"250 2.0.0 queued\r\n")
                    continue
                verb = line.split(b" ", 1)[0].strip().upper()
                if verb == b"EHLO":
                    # The real server offered STARTTLS; the man in the middle removed it.
                    writer.write(b"250-mail.example.com\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")
                elif verb == b"STARTTLS":
                    writer.write(b"454 4.7.0 TLS not available\r\n")
                elif verb == b"AUTH":
                    writer.write(b"235 2.7.0 Authentication successful\r\n")
                elif verb == b"DATA":
                    in_data = True
                    writer.write(b"354 go ahead\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 OK\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    @property
    def saw_credentials(self) -> bool:
        return b"AUTH" in self.received.upper() or AUTH_PLAIN in self.received or PASSWORD.encode() in self.received


@pytest.fixture
async def mitm() -> AsyncIterator[StrippingServer]:
    async with StrippingServer() as server:
        yield server


@pytest.mark.parametrize("starttls", ["", "?starttls=auto", "?starttls=required"])
async def test_auth_is_never_sent_when_starttls_is_stripped(mitm: StrippingServer, starttls: str) -> None:
    connection = SmtpConnection(SmtpTarget.from_url(f"smtp://{USER}:{PASSWORD}@127.0.0.1:{mitm.port}{starttls}"), 5.0)

    with pytest.raises(SendError) as refused:
        await connection.send("a@example.com", "b@example.com", MESSAGE)
    await connection.close()

    assert refused.value.permanent is False  # retried, then dead-lettered, per the message's lifecycle
    assert mitm.received.startswith(b"EHLO")
    assert not mitm.saw_credentials
    assert b"MAIL FROM" not in mitm.received


async def test_the_dispatcher_marks_the_failure_and_logs_one_clear_line(
    mitm: StrippingServer, migrated_database_url: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    await apply_examples(migrated_database_url)
    settings = make_settings(
        DispatcherSettings,
        migrated_database_url,
        "127.0.0.1:9",  # not contacted: the dispatcher is driven directly
        topic_prefix,
        smtp_url=f"smtp://{USER}:{PASSWORD}@127.0.0.1:{mitm.port}",
        smtp_timeout_s=5.0,
        max_attempts=3,
    )
    pool: psycopg_pool.AsyncConnectionPool[Connection] = await open_pool(settings)
    smtp = SmtpPool(SmtpTarget.from_url(settings.smtp_url), settings.smtp_timeout_s, size=1, throttle_pause_s=0.01)
    try:
        message_id = await _queued_message(pool)
        with caplog.at_level(logging.ERROR, logger="services.dispatcher.smtp"):
            status = await Dispatcher(settings, pool, smtp).dispatch(message_id)
        row = await _message_row(pool, message_id)
    finally:
        await smtp.close()
        await pool.close()

    assert status == "retrying"
    assert (row["status"], row["attempts"]) == ("retrying", 1)
    assert "offered no STARTTLS: credentials not sent" in str(row["last_error"])
    lines = [r for r in caplog.records if r.name == "services.dispatcher.smtp"]
    assert [r.getMessage() for r in lines] == ["SMTP AUTH refused without TLS"]
    assert not mitm.saw_credentials


async def test_a_local_relay_may_be_allowed_plaintext_auth_explicitly(mitm: StrippingServer) -> None:
    target = SmtpTarget.from_url(f"smtp://{USER}:{PASSWORD}@127.0.0.1:{mitm.port}", allow_plaintext_auth=True)
    connection = SmtpConnection(target, 5.0)

    reply = await connection.send("a@example.com", "b@example.com", MESSAGE)
    await connection.close()

    assert reply == "2.0.0 queued"
    assert AUTH_PLAIN in mitm.received


async def test_without_credentials_a_plain_session_still_sends(mitm: StrippingServer) -> None:
    connection = SmtpConnection(SmtpTarget.from_url(f"smtp://127.0.0.1:{mitm.port}"), 5.0)

    reply = await connection.send("a@example.com", "b@example.com", MESSAGE)
    await connection.close()

    assert reply == "2.0.0 queued"


# --- the honest server: STARTTLS, then AUTH ------------------------------------------------------


@pytest.fixture
def trusted_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    # The client verifies the server as in production; it trusts this certificate the standard way.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    return cert_file, key_file


class Recording:
    def __init__(self) -> None:
        self.logins: list[tuple[str, bool]] = []
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def honest_server(trusted_certificate: tuple[Path, Path]) -> Iterator[tuple[int, Recording]]:
    cert_file, key_file = trusted_certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    recording = Recording()

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        recording.logins.append((auth_data.login.decode(), session.ssl is not None))
        return AuthResult(success=auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode())

    port = free_port()
    controller = Controller(
        recording,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticate,
    )
    controller.start()
    try:
        yield port, recording
    finally:
        controller.stop()


async def test_with_starttls_the_credentials_go_over_tls_and_the_message_is_sent(
    honest_server: tuple[int, Recording],
) -> None:
    port, recording = honest_server
    connection = SmtpConnection(SmtpTarget.from_url(f"smtp://{USER}:{PASSWORD}@localhost:{port}"), 5.0)

    reply = await connection.send("a@example.com", "b@example.com", MESSAGE)
    await connection.close()

    assert reply == "OK"
    assert recording.logins == [(USER, True)]
    assert len(recording.messages) == 1
