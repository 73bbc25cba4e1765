"""SMTP transport (aiosmtplib): a pool of persistent connections, timeouts and failure classification.

A failure is *transient* (4xx replies, timeouts, refused or dropped connections: retry later) or
*permanent* (5xx replies: retrying cannot help). When the server says it is overloaded or throttling
(421, 451, 454) the whole pool pauses before the next transaction, doubling the pause while the server
keeps saying so, instead of hammering it with the rest of the batch. Replies to sends that were already
in flight when the pool paused belong to the same burst and do not double it again (with eight
connections, one burst used to multiply the pause by 128).

Credentials never cross the network in clear: when SMTP_URL carries a user, AUTH is sent only on a
session that is encrypted (``smtps://``, or after STARTTLS), whatever ``starttls=`` says — a
man-in-the-middle that strips STARTTLS from the server's EHLO gets a refused connection, not the
password — unless ``SMTP_ALLOW_PLAINTEXT_AUTH`` says the relay is local.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from services.common import metrics
from services.dispatcher.smtp_pipelining import pipelined_transaction

log = logging.getLogger(__name__)

STARTTLS_MODES = ("auto", "required", "never")
# Replies that mean "slow down": the pool pauses rather than retrying at full speed.
THROTTLE_CODES = frozenset({421, 451, 454})
MAX_THROTTLE_PAUSE_S = 300.0


class SendError(Exception):
    """Sending failed; ``permanent`` tells whether a retry could succeed."""

    def __init__(self, reason: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.code = code


@dataclass(frozen=True)
class SmtpTarget:
    hostname: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool
    starttls: bool | None  # None: use STARTTLS when the server offers it
    # AUTH on an unencrypted session: only for a relay on the same host or pod (SMTP_ALLOW_PLAINTEXT_AUTH).
    allow_plaintext_auth: bool = False

    @classmethod
    def from_url(cls, url: str, *, allow_plaintext_auth: bool = False) -> SmtpTarget:
        """``smtp://[user:pass@]host[:port][?starttls=required|never]`` or ``smtps://...`` (implicit TLS)."""
        parts = urlsplit(url)
        implicit = parts.scheme == "smtps"
        mode = parse_qs(parts.query).get("starttls", ["auto"])[0]
        if mode not in STARTTLS_MODES:
            # A typo must never silently turn encryption off.
            raise ValueError(f"starttls must be one of {', '.join(STARTTLS_MODES)}, not {mode!r}")
        return cls(
            hostname=parts.hostname or "localhost",
            port=parts.port or (465 if implicit else 587),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit,
            starttls=None if implicit or mode == "auto" else mode == "required",
            allow_plaintext_auth=allow_plaintext_auth,
        )


class TlsRequiredForAuth(aiosmtplib.SMTPException):
    """The session is not encrypted and SMTP_URL has credentials: AUTH is not sent (a transient failure:
    the message is retried, then dead-lettered, per its lifecycle)."""


def classify(error: BaseException) -> SendError:
    """The one mapping from what aiosmtplib raises to a transient or permanent :class:`SendError`."""
    if isinstance(error, TlsRequiredForAuth):
        return SendError(str(error), permanent=False)
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        codes = [refusal.code for refusal in error.recipients]
        reason = "; ".join(f"{r.code} {r.message}" for r in error.recipients)
        return SendError(f"recipient refused: {reason}", permanent=all(c >= 500 for c in codes), code=max(codes))
    if isinstance(error, aiosmtplib.SMTPResponseException) and error.code > 0:
        return SendError(f"{error.code} {error.message}", permanent=error.code >= 500, code=error.code)
    return SendError(f"connection failed: {error!r}", permanent=False)


class SmtpConnection:
    """One persistent SMTP session, (re)connected on demand."""

    def __init__(self, target: SmtpTarget, timeout_s: float) -> None:
        self._target = target
        self._timeout_s = timeout_s
        self._client: aiosmtplib.SMTP | None = None

    async def send(self, sender: str, recipient: str, data: bytes) -> str:
        """One SMTP transaction; returns the server's final reply or raises :class:`SendError`."""
        try:
            # aiosmtplib bounds each command; this bounds the whole transaction including the connect.
            async with asyncio.timeout(self._timeout_s * 3):
                client = await self._connected()
                reply = await mail_transaction(client, sender, recipient, data)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            failure = classify(error)
            if failure.code is None or failure.code == 421:
                await self.close()  # the session is gone or going; the next send reconnects
            raise failure from error
        return reply

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        target = self._target
        # No credentials for aiosmtplib: it would log in on connect whether or not STARTTLS happened.
        client = aiosmtplib.SMTP(
            hostname=target.hostname,
            port=target.port,
            use_tls=target.implicit_tls,
            start_tls=False if target.implicit_tls else target.starttls,
            timeout=self._timeout_s,
        )
        await client.connect()  # also STARTTLS, as configured
        if target.username is not None:
            await self._login(client)
        if client.is_ehlo_or_helo_needed:  # once per session, not per transaction
            await client.ehlo()
        self._client = client
        metrics.SMTP_CONNECTS.inc()
        return client

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        target = self._target
        encrypted = client.get_transport_info("sslcontext") is not None
        if not encrypted and not target.allow_plaintext_auth:
            client.close()
            reason = (
                f"SMTP server {target.hostname}:{target.port} offered no STARTTLS: credentials not sent "
                "(a man in the middle may have stripped it; SMTP_ALLOW_PLAINTEXT_AUTH=true only for a local relay)"
            )
            log.error("SMTP AUTH refused without TLS", extra={"reason": reason})
            raise TlsRequiredForAuth(reason)
        await client.login(target.username or "", target.password or "")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                async with asyncio.timeout(self._timeout_s):
                    await client.quit()
            client.close()


async def mail_transaction(client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes) -> str:
    """MAIL, RCPT and DATA on a session past EHLO; returns the final reply. What ``sendmail`` does for
    one recipient, without parsing both addresses twice and measuring the message for SIZE on every
    send (a quarter of the dispatcher's CPU per email): the addresses were validated when they were
    stored, and aiosmtplib still refuses a command carrying CR or LF. When the server offers PIPELINING
    (RFC 2920) MAIL, RCPT and DATA go in one write (:mod:`services.dispatcher.smtp_pipelining`).
    Raises what ``sendmail`` raises, after resetting the envelope on a refusal."""
    utf8 = not (sender + recipient).isascii()
    if utf8 and not client.supports_extension("smtputf8"):
        raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
    encoding = "utf-8" if utf8 else "ascii"
    mail_from = b"FROM:<" + sender.encode(encoding) + b">" + (b" SMTPUTF8" if utf8 else b"")
    rcpt_to = b"TO:<" + recipient.encode(encoding) + b">"
    try:
        if client.supports_extension("pipelining"):
            return await pipelined_transaction(client, mail_from, rcpt_to, data)
        reply = await client.execute_command(b"MAIL", *mail_from.split(b" "))
        if reply.code != 250:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        reply = await client.execute_command(b"RCPT", rcpt_to)
        if reply.code not in (250, 251):
            refused = aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
            raise aiosmtplib.SMTPRecipientsRefused([refused])
        return (await client.data(data)).message
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await client.rset()
        raise


class SmtpPool:
    """``size`` persistent connections shared by the dispatcher's concurrent sends."""

    def __init__(self, target: SmtpTarget, timeout_s: float, *, size: int, throttle_pause_s: float = 5.0) -> None:
        self._all = [SmtpConnection(target, timeout_s) for _ in range(size)]
        self._idle: asyncio.Queue[SmtpConnection] = asyncio.Queue()
        for connection in self._all:
            self._idle.put_nowait(connection)
        self._throttle_pause_s = throttle_pause_s
        self._pause = 0.0
        self._resume_at = 0.0
        self._paused_at = float("-inf")

    async def acquire(self) -> SmtpConnection:
        """A connection for one transaction; waits while every connection is busy or the pool is paused."""
        connection = await self._idle.get()
        try:
            loop = asyncio.get_running_loop()
            # Re-checked after each sleep: another throttled reply may have extended the pause.
            while (wait := self._resume_at - loop.time()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
        except BaseException:
            self._idle.put_nowait(connection)
            raise
        return connection

    def release(self, connection: SmtpConnection) -> None:
        self._idle.put_nowait(connection)

    async def send(self, connection: SmtpConnection, sender: str, recipient: str, data: bytes) -> str:
        """Send over an acquired connection, pausing the pool when the server throttles."""
        started = asyncio.get_running_loop().time()
        try:
            reply = await connection.send(sender, recipient, data)
        except SendError as error:
            if error.code in THROTTLE_CODES:
                self._throttled(error, started)
            raise
        self._pause = 0.0
        return reply

    @property
    def pause_s(self) -> float:
        """The current throttle pause (0 when the server last accepted a message)."""
        return self._pause

    def _throttled(self, error: SendError, started: float) -> None:
        metrics.SMTP_THROTTLED.inc()
        if started <= self._paused_at:
            return  # in flight when an earlier reply paused the pool: the same burst, already paid for
        now = asyncio.get_running_loop().time()
        self._pause = min(MAX_THROTTLE_PAUSE_S, self._pause * 2 if self._pause else self._throttle_pause_s)
        self._paused_at = now
        self._resume_at = now + self._pause
        log.warning("SMTP server throttles; pausing sends", extra={"pause_s": self._pause, "reply": error.reason})

    async def close(self) -> None:
        await asyncio.gather(*(connection.close() for connection in self._all))
