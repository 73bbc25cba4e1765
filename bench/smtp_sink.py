"""A minimal, fast SMTP sink for benchmarks and the chaos harness.

Runs as its own process so it does not share an event loop with what it measures: ``python -m
bench.smtp_sink PORT`` accepts every message and discards it (the dispatch benchmark's fallback when
Postfix's ``smtp-sink`` is missing; both the raw ceiling and the dispatchers send to it, so the ratio
compares like with like); :mod:`bench.chaos_sink` runs the same server storing every message.

It speaks just enough ESMTP for aiosmtplib and the dispatcher: EHLO/HELO (offering PIPELINING, 8BITMIME,
SMTPUTF8), MAIL, RCPT, DATA (dot-unstuffed), RSET, NOOP, QUIT. It is an ``asyncio.Protocol`` that
parses whatever one read brought and answers it in one write: a pipelined group (MAIL, RCPT, DATA) costs
one wake-up and one ``send``, where a stream reader awaiting line by line, as aiosmtpd does, costs one
per command. (aiosmtpd, the sink the chaos harness used before, answered the dispatchers' 300 emails/s
in 100-200 ms per transaction on this 2-vCPU machine, and became the queue that the first email's
latency measured; see docs/performance.md.)
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

EHLO_REPLY = b"250-%s\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 52428800\r\n"
# The end of DATA content: a line holding a single "." (the content's last CRLF is the message's own).
END_OF_DATA = b"\r\n.\r\n"
MAX_LINE = 4096  # a command line longer than this without a CRLF closes the session


@dataclass
class SinkRules:
    """What the sink does with a message: append it to ``store_path`` (None: discard), refuse the
    recipients in ``rejected`` (casefolded addresses) at RCPT with 550, and while ``fail_with`` is set
    answer every DATA so (after its content) and store nothing. Written by the controlling thread at any
    time; read on the event loop (an attribute assignment is atomic).

    Every message goes to one file, appended and flushed as it is accepted (:func:`read_stored` reads
    it back): a file per message cost a create, a rename and the directory's journal each, in the
    sink's event loop, at hundreds of messages a second."""

    store_path: Path | None = None
    rejected: set[str] = field(default_factory=set)
    fail_with: tuple[int, str] | None = None
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _file: BinaryIO | None = None

    def store(self, data: bytes) -> str:
        """Append ``data`` with its receive time (UTC) and return the name it is queued as (discarding:
        only a counter, nothing formatted)."""
        number = next(self._counter)
        if self.store_path is None:
            return f"{number:06d}"
        stamp = datetime.now(UTC).strftime(STAMP_FORMAT)
        if self._file is None:
            self._file = self.store_path.open("ab")
        self._file.write(b"%d %s\n" % (len(data), stamp.encode()) + data)
        self._file.flush()
        return f"{stamp}-{number:06d}"

    def close(self) -> None:
        """Close the store's file (every message is already flushed)."""
        if self._file is not None:
            self._file.close()
            self._file = None


STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"


def read_stored(path: Path) -> list[tuple[datetime, bytes]]:
    """The messages a sink appended to ``path``, in receive order: (receive time, bytes as sent)."""
    if not path.exists():
        return []
    content = path.read_bytes()
    stored = []
    offset = 0
    while offset < len(content):
        end = content.index(b"\n", offset)
        length, stamp = content[offset:end].split(b" ")
        start = end + 1
        received = datetime.strptime(stamp.decode(), STAMP_FORMAT).replace(tzinfo=UTC)
        stored.append((received, content[start : start + int(length)]))
        offset = start + int(length)
    return stored


def _address(argument: bytes) -> str:
    """The address of ``TO:<a@b> PARAMS`` (or ``FROM:...``), without brackets, casefolded."""
    _, _, rest = argument.partition(b":")
    value = rest.strip().split(b" ", 1)[0] if rest.strip() else b""
    return value.strip(b"<>").decode("utf-8", "replace").casefold()


def unstuff(content: bytes) -> bytes:
    """DATA content as sent, with the transparency dots removed (RFC 5321 4.5.2): a line that starts
    with "." had one more "." put in front of it by the client."""
    body = content.replace(b"\r\n..", b"\r\n.")
    return body[1:] if body.startswith(b"..") else body


class SinkSession(asyncio.Protocol):
    """One SMTP session: every complete command (or DATA content) in the buffer is answered, and the
    replies of one read go out in one write."""

    def __init__(self, rules: SinkRules) -> None:
        self.rules = rules
        self.buffer = bytearray()
        self.in_data = False
        self.recipients = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 bench-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        replies: list[bytes] = []
        closing = False
        while not closing:
            if self.in_data:
                # The content began at a line start; it ends at a line holding a single ".".
                if self.buffer.startswith(b".\r\n"):
                    end, consumed = 0, 3
                else:
                    found = self.buffer.find(END_OF_DATA)
                    if found < 0:
                        break
                    end, consumed = found + 2, found + len(END_OF_DATA)
                content = bytes(self.buffer[:end])
                del self.buffer[:consumed]
                self.in_data = False
                replies.append(self._end_of_data(content))
                continue
            newline = self.buffer.find(b"\r\n")
            if newline < 0:
                if len(self.buffer) > MAX_LINE:
                    replies.append(b"500 5.5.6 line too long\r\n")
                    closing = True
                break
            line = bytes(self.buffer[:newline])
            del self.buffer[: newline + 2]
            reply, closing = self._command(line)
            replies.append(reply)
        if replies:
            self.transport.write(b"".join(replies))
        if closing:
            self.transport.close()

    def _command(self, line: bytes) -> tuple[bytes, bool]:
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        if verb in (b"EHLO", b"HELO"):
            self.recipients = 0
            return (EHLO_REPLY % b"bench-sink" if verb == b"EHLO" else b"250 bench-sink\r\n"), False
        if verb == b"MAIL":
            self.recipients = 0
            return b"250 2.1.0 OK\r\n", False
        if verb == b"RCPT":
            if _address(argument) in self.rules.rejected:
                return b"550 5.1.1 chaos: no such user\r\n", False
            self.recipients += 1
            return b"250 2.1.5 OK\r\n", False
        if verb == b"DATA":
            if not self.recipients:
                return b"554 5.5.1 no valid recipients\r\n", False
            self.in_data = True
            return b"354 end data with <CR><LF>.<CR><LF>\r\n", False
        if verb == b"RSET":
            self.recipients = 0
            return b"250 2.0.0 OK\r\n", False
        if verb == b"NOOP":
            return b"250 2.0.0 OK\r\n", False
        if verb == b"QUIT":
            return b"221 2.0.0 bye\r\n", True
        return b"500 5.5.2 command not recognised\r\n", False

    def _end_of_data(self, content: bytes) -> bytes:
        self.recipients = 0
        failure = self.rules.fail_with
        if failure is not None:
            code, text = failure
            return f"{code} {text}\r\n".encode()
        name = self.rules.store(unstuff(content))
        return f"250 2.0.0 OK queued as {name}\r\n".encode()


async def serve(port: int, rules: SinkRules, started: asyncio.Event | None = None) -> None:
    """Serve on 127.0.0.1:``port`` until cancelled; sets ``started`` once listening."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkSession(rules), "127.0.0.1", port, backlog=512)
    if started is not None:
        started.set()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), SinkRules()))
