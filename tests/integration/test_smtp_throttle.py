"""The SMTP pool's throttle pause against a real SMTP server: one burst of throttled replies (every
connection's send in flight at once) pauses the pool once; only a server that keeps throttling after
the pause doubles it. Found by the chaos harness: eight concurrent 451s paused a dispatcher 128 times
the configured pause."""

from __future__ import annotations

import asyncio

import pytest

from devstack.mailsink import MailSink
from services.dispatcher.smtp import SendError, SmtpPool, SmtpTarget

pytestmark = pytest.mark.integration

DATA = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: t\r\n\r\nbody\r\n"


async def send_on_every_connection(pool: SmtpPool, size: int) -> list[BaseException | str]:
    connections = [await pool.acquire() for _ in range(size)]
    try:
        return await asyncio.gather(
            *(pool.send(c, "a@example.com", "b@example.com", DATA) for c in connections), return_exceptions=True
        )
    finally:
        for connection in connections:
            pool.release(connection)


async def test_one_burst_of_throttled_replies_pauses_the_pool_once_and_a_second_burst_doubles_it(
    mail_sink: MailSink,
) -> None:
    target = SmtpTarget.from_url(f"smtp://{mail_sink.host}:{mail_sink.port}?starttls=never")
    pool = SmtpPool(target, 10.0, size=8, throttle_pause_s=0.2)
    mail_sink.fail_with = (451, "4.3.0 try again later")
    try:
        replies = await send_on_every_connection(pool, 8)
        assert all(isinstance(r, SendError) and r.code == 451 for r in replies)
        assert pool.pause_s == pytest.approx(0.2)  # not 0.2 * 2**7

        # After the pause, the server still throttles: now the pause doubles, once per burst.
        replies = await send_on_every_connection(pool, 8)
        assert pool.pause_s == pytest.approx(0.4)

        mail_sink.fail_with = None
        replies = await send_on_every_connection(pool, 8)
        assert all(isinstance(r, str) for r in replies)
        assert pool.pause_s == 0.0
    finally:
        await pool.close()
