"""A local SMTP server that stores every accepted message as an ``.eml`` file (dev mode and tests).

:class:`MailSink` runs an aiosmtpd server in a background thread.  It accepts ESMTP with ``8BITMIME``
and ``SMTPUTF8`` and writes each message's bytes exactly as received (no ``Return-Path`` or envelope
headers added) into a directory, one file per message, atomically.  Fault hooks (``fail_with``,
``reject_recipients``) let tests simulate temporary and permanent SMTP failures.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller

__all__ = ["MailSink"]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class _Handler:
    """aiosmtpd handler hooks; runs on the controller's event-loop thread."""

    def __init__(self, sink: MailSink) -> None:
        self._sink = sink

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when no handler takes EHLO
        if self._sink.pipelining:
            # aiosmtpd reads commands from a buffered stream and answers them in order, so a pipelined
            # group works; it only never says so (before its final "250 HELP" line).
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        rejection = self._sink._rejection_for(address)
        if rejection is not None:
            code, text = rejection
            return f"{code} {text}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        failure = self._sink.fail_with
        if failure is not None:
            code, text = failure
            return f"{code} {text}"
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
        name = self._sink._store(data, str(envelope.mail_from or ""), list(envelope.rcpt_tos))
        return f"250 2.0.0 OK queued as {name}"


class MailSink:
    """SMTP server on ``host``:``port`` (free port if ``None``) that saves every message in ``mail_dir``.

    Each accepted message becomes ``<UTC timestamp>-<counter>-<short uuid>.eml`` in ``mail_dir``
    (created if missing): the DATA bytes exactly as received, written to a temp name and then
    ``os.replace``-d, so readers never see partial files.  Sorting file names gives receive order.

    Fault hooks, readable and writable from any thread at any time:

    * ``fail_with = (451, "4.3.0 try later")``: every DATA is answered with that reply; nothing is stored.
    * ``reject_recipients = {"bounce@example.com": (550, "5.1.1 no such user")}``: RCPT TO for those
      addresses (case-insensitive) gets that reply; other recipients are still accepted.

    ``pipelining=True`` offers PIPELINING (RFC 2920) in the EHLO reply, as relays and providers do, so
    a client sends MAIL, RCPT and DATA in one write (aiosmtpd answers a pipelined group correctly but does
    not offer the extension by itself).

    Usable as a context manager (``start()`` on enter, ``stop()`` on exit).
    """

    def __init__(
        self, mail_dir: Path, host: str = "127.0.0.1", port: int | None = None, *, pipelining: bool = False
    ) -> None:
        """Configure (but do not start) the sink."""
        self.mail_dir = Path(mail_dir)
        self.pipelining = pipelining
        self._host = host
        self._port = port if port is not None else _free_port(host)
        self.fail_with: tuple[int, str] | None = None
        self.reject_recipients: dict[str, tuple[int, str]] = {}
        self._envelopes: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._controller: Controller | None = None

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._port

    @property
    def envelopes(self) -> list[tuple[str, list[str]]]:
        """A snapshot of ``(mail_from, rcpt_tos)`` of every *stored* message, in receive order."""
        with self._lock:
            return [(sender, list(rcpts)) for sender, rcpts in self._envelopes]

    def start(self) -> None:
        """Create ``mail_dir`` and start serving in a background thread (idempotent)."""
        if self._controller is not None:
            return
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        controller = Controller(
            _Handler(self),
            hostname=self._host,
            port=self._port,
            server_hostname="mailsink.local",
            ready_timeout=10.0,
            enable_SMTPUTF8=True,
            decode_data=False,
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop serving (idempotent).  Stored files are kept."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop(no_assert=True)

    def message_paths(self) -> list[Path]:
        """Paths of the stored ``.eml`` files, sorted by name (= receive order)."""
        if not self.mail_dir.exists():
            return []
        return sorted(self.mail_dir.glob("*.eml"))

    def messages(self) -> list[EmailMessage]:
        """Every stored message parsed with ``email.policy.default``, sorted by file name."""
        result: list[EmailMessage] = []
        for path in self.message_paths():
            with path.open("rb") as fh:
                msg = email.message_from_binary_file(fh, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            result.append(msg)
        return result

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Block until at least ``count`` messages are stored, then return :meth:`messages`.

        Raises :class:`TimeoutError` after ``timeout`` seconds.  Do not call from an event loop that
        must keep running (e.g. the sender's); use :meth:`wait_for_messages_async` there.
        """
        deadline = time.monotonic() + timeout
        while len(self.message_paths()) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"expected {count} message(s) in {self.mail_dir}, have {len(self.message_paths())}")
            time.sleep(0.05)
        return self.messages()

    async def wait_for_messages_async(self, count: int) -> list[EmailMessage]:
        """Like :meth:`wait_for_messages` but polls with ``asyncio.sleep`` and has no timeout of its own.

        Bound it with ``async with asyncio.timeout(...)`` (or rely on pytest-timeout).
        """
        while True:
            if len(self.message_paths()) >= count:
                return self.messages()
            await asyncio.sleep(0.05)

    def clear(self) -> None:
        """Delete stored messages and forget recorded envelopes (fault hooks are kept)."""
        with self._lock:
            for path in self.message_paths():
                path.unlink(missing_ok=True)
            self._envelopes.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MailSink(mail_dir={str(self.mail_dir)!r}, host={self._host!r}, port={self._port})"

    # -- called from the handler --------------------------------------------------------------------

    def _rejection_for(self, address: str) -> tuple[int, str] | None:
        wanted = address.strip().strip("<>").casefold()
        for candidate, reply in list(self.reject_recipients.items()):
            if candidate.strip().strip("<>").casefold() == wanted:
                return reply
        return None

    def _store(self, data: bytes, mail_from: str, rcpt_tos: list[str]) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        with self._lock:
            name = f"{stamp}-{next(self._counter):06d}-{uuid.uuid4().hex[:8]}.eml"
            tmp = self.mail_dir / f".{name}.part"
            with tmp.open("wb") as fh:
                fh.write(data)
            os.replace(tmp, self.mail_dir / name)
            self._envelopes.append((mail_from, list(rcpt_tos)))
        return name
