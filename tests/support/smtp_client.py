"""An aiosmtplib session to a local test SMTP server (plain TCP, EHLO done), for the tests of the
dispatcher's SMTP transaction and of the benchmarks' sink."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosmtplib


@asynccontextmanager
async def session(port: int) -> AsyncIterator[aiosmtplib.SMTP]:
    """A connected client to 127.0.0.1:``port`` after EHLO (5 s timeout), closed at the end."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=5.0)
    await client.connect()
    await client.ehlo()
    try:
        yield client
    finally:
        client.close()
