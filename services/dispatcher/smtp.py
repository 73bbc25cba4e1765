"""SMTP transport (aiosmtplib) with timeouts and failure classification.

A failure is *transient* (4xx replies, timeouts, refused or dropped connections: retry later) or
*permanent* (5xx replies: retrying cannot help).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

STARTTLS_MODES = ("auto", "required", "never")


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

    @classmethod
    def from_url(cls, url: str) -> SmtpTarget:
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
        )


class SmtpTransport:
    """Sends one message per call over a fresh connection, every step bounded by ``timeout_s``."""

    def __init__(self, target: SmtpTarget, timeout_s: float) -> None:
        self._target = target
        self._timeout_s = timeout_s

    async def send(self, message: EmailMessage) -> str:
        """Send ``message``; returns the server's final reply, or raises :class:`SendError`."""
        target = self._target
        try:
            _, reply = await asyncio.wait_for(
                aiosmtplib.send(
                    message,
                    hostname=target.hostname,
                    port=target.port,
                    username=target.username,
                    password=target.password,
                    use_tls=target.implicit_tls,
                    start_tls=False if target.implicit_tls else target.starttls,
                    timeout=self._timeout_s,
                ),
                # aiosmtplib bounds each command; this bounds the whole transaction.
                timeout=self._timeout_s * 3,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [refusal.code for refusal in error.recipients]
            permanent = all(code >= 500 for code in codes)
            reason = "; ".join(f"{r.code} {r.message}" for r in error.recipients)
            raise SendError(f"recipient refused: {reason}", permanent=permanent, code=max(codes)) from error
        except aiosmtplib.SMTPResponseException as error:
            raise SendError(f"{error.code} {error.message}", permanent=error.code >= 500, code=error.code) from error
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise SendError(f"connection failed: {error!r}", permanent=False) from error
        return reply
