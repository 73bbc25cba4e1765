"""SMTP PIPELINING (RFC 2920) for one mail transaction: MAIL, RCPT and DATA in one write, the body in a second.

Without it a transaction is four writes and four round trips (MAIL, RCPT, DATA, the body), and the
``send`` system call was the largest single cost in a profile of the dispatcher. aiosmtplib's protocol
reads one reply per command written and drops a reply that arrives before the previous one was picked
up, so while a pipelined group is outstanding :class:`PipelinedReplies` reads the replies from the
connection itself, in order (a protocol of its own installed on the transport with ``set_protocol``),
and hands the connection back to aiosmtplib once every reply is in. A
transaction that ends with replies still outstanding (a timeout, a cancel, a dropped connection) closes
the session: its next reply could not be paired with a command.
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType

import aiosmtplib
from aiosmtplib.protocol import (
    COMMAND_INJECTION_REGEX,
    MAX_LINE_LENGTH,
    MAX_RESPONSE_LENGTH,
    PERIOD_REGEX,
    SMTPProtocol,
    normalize_message_line_endings,
)

START_INPUT = 354


class PipelinedReplies:
    """The replies to pipelined commands, read from the protocol's connection while installed."""

    def __init__(self, protocol: SMTPProtocol, reply_timeout_s: float | None) -> None:
        self._protocol = protocol
        self._reply_timeout_s = reply_timeout_s
        self._buffer = bytearray()
        self._replies: collections.deque[aiosmtplib.SMTPResponse] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._transport: asyncio.BaseTransport

    def __enter__(self) -> PipelinedReplies:
        # The transport's protocol is swapped, not the protocol's methods patched: uvloop's transports
        # bind the protocol's methods once, when it is set.
        transport = self._protocol.transport
        if transport is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        transport.set_protocol(_Interceptor(self, self._protocol))
        self._transport = transport
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._transport.set_protocol(self._protocol)

    async def next(self) -> aiosmtplib.SMTPResponse:
        """The next reply in order; raises what aiosmtplib raises for a lost, silent or garbled server."""
        while not self._replies:
            if self._error is not None:
                raise self._error
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            # A timer on the waiter itself rather than asyncio.wait_for, which wraps it in a second
            # future and callbacks: 6.5 µs a wait instead of 10.4, twice per email. The same semantics:
            # TimeoutError after the reply timeout, a cancel cancels the wait.
            timer = None if self._reply_timeout_s is None else loop.call_later(self._reply_timeout_s, _expire, waiter)
            try:
                await waiter
            except TimeoutError as error:
                raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from error
            finally:
                if timer is not None:
                    timer.cancel()
                self._waiter = None
        return self._replies.popleft()

    def data_received(self, data: bytes) -> None:
        """The replies' bytes (called by the installed protocol)."""
        self._buffer.extend(data)
        try:
            while (reply := self._parse_one()) is not None:
                self._replies.append(reply)
            if len(self._buffer) > MAX_RESPONSE_LENGTH:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
        except aiosmtplib.SMTPResponseException as error:
            self._buffer.clear()
            self._error = error
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended while replies were awaited; aiosmtplib's protocol learns of it too."""
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._error = self._error or lost
        self._wake()
        self._protocol.connection_lost(exc)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _parse_one(self) -> aiosmtplib.SMTPResponse | None:
        """One complete (possibly multi-line) reply from the front of the buffer, or None for a partial one."""
        offset = 0
        lines: list[bytes] = []
        while (end := self._buffer.find(b"\n", offset)) != -1:
            line = bytes(self._buffer[offset : end + 1])
            if len(line) > MAX_LINE_LENGTH:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
            try:
                code = int(line[:3])
            except ValueError:
                text = line.decode("utf-8", errors="ignore")
                raise aiosmtplib.SMTPResponseException(-1, f"Malformed SMTP response line: {text}") from None
            offset = end + 1
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self._buffer[:offset]
                return aiosmtplib.SMTPResponse(code, b"\n".join(lines).decode("utf-8", "surrogateescape"))
        return None


class _Interceptor(asyncio.Protocol):
    """The transport's protocol while a pipelined group is outstanding: replies and the connection's end
    go to :class:`PipelinedReplies`; flow control and end of file to aiosmtplib's protocol."""

    def __init__(self, replies: PipelinedReplies, protocol: SMTPProtocol) -> None:
        self._replies = replies
        self._protocol = protocol

    def data_received(self, data: bytes) -> None:
        self._replies.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._replies.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self._protocol.eof_received()

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()


async def pipelined_transaction(client: aiosmtplib.SMTP, mail_from: bytes, rcpt_to: bytes, data: bytes) -> str:
    """MAIL, RCPT and DATA in one write, then the body; returns the final reply.

    ``mail_from`` and ``rcpt_to`` are the commands' arguments (``FROM:<a@b>``, ``TO:<c@d>``). Raises what
    the one-command-at-a-time transaction raises for the first reply that refuses (MAIL, then RCPT, then
    DATA, then the final reply), so a refusal is classified the same either way; the caller resets the
    envelope. When DATA was accepted after a refusal, a lone "." ends the empty message (RFC 2920, 3.1).
    """
    protocol = client.protocol
    if protocol is None or not protocol.is_connected:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    for argument in (mail_from, rcpt_to):
        if COMMAND_INJECTION_REGEX.search(argument):
            raise ValueError("Command arg contains a prohibited control character")
    body = data_body(data)
    refusal: aiosmtplib.SMTPException | None = None
    final: aiosmtplib.SMTPResponse | None = None
    answered = False
    with PipelinedReplies(protocol, client.timeout) as replies:
        try:
            protocol.write(b"MAIL " + mail_from + b"\r\nRCPT " + rcpt_to + b"\r\nDATA\r\n")
            mail = await replies.next()
            rcpt = await replies.next()
            start = await replies.next()
            if mail.code != 250:
                refusal = aiosmtplib.SMTPSenderRefused(mail.code, mail.message, _address(mail_from))
            elif rcpt.code not in (250, 251):
                refused = aiosmtplib.SMTPRecipientRefused(rcpt.code, rcpt.message, _address(rcpt_to))
                refusal = aiosmtplib.SMTPRecipientsRefused([refused])
            if start.code == START_INPUT:
                protocol.write(b".\r\n" if refusal is not None else body)
                final = await replies.next()
            elif refusal is None:
                refusal = aiosmtplib.SMTPDataError(start.code, start.message)
            answered = True
        finally:
            if not answered:
                client.close()  # replies are still outstanding: this session cannot be reused
    if refusal is not None:
        raise refusal
    assert final is not None  # DATA was accepted and answered, or refused above
    if final.code != 250:
        raise aiosmtplib.SMTPDataError(final.code, final.message)
    return final.message


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def data_body(data: bytes) -> bytes:
    """What DATA transmits for ``data``: line endings normalized to CRLF, a leading period doubled
    (dot-stuffing), the ending ".". The same bytes as aiosmtplib's ``data``; a message already in CRLF
    with no line starting with "." (what ``services.common.mime`` writes) skips both regular
    expressions, each of which would otherwise copy the whole message: counting is cheaper."""
    crlf = data.count(b"\r\n")
    if not (data.count(b"\n") == crlf == data.count(b"\r") and data.endswith(b"\r\n")):
        data = normalize_message_line_endings(data)
    if data.startswith(b".") or b"\n." in data:
        data = PERIOD_REGEX.sub(b"..", data)
    return data + b".\r\n"


def _address(argument: bytes) -> str:
    """``a@b`` from ``FROM:<a@b> SMTPUTF8``: the refused address, as aiosmtplib's errors name it."""
    return argument.partition(b"<")[2].partition(b">")[0].decode("utf-8", "surrogateescape")
