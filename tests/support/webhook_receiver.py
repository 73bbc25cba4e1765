"""A real HTTP server standing in for a customer's webhook endpoint: records every request and
answers as the test scripts it (status, body, a delay, a redirect)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from standardwebhooks.webhooks import Webhook


@dataclass(frozen=True)
class Answer:
    """What the receiver answers to one request."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """``url`` is the base URL; ``answers`` are used in order (then ``default``); ``received`` in arrival order."""

    url: str
    answers: deque[Answer] = field(default_factory=deque)
    default: Answer = Answer()
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def verified(self, secret: str) -> list[dict[str, object]]:
        """Every received body, each verified with the ``standardwebhooks`` package (raises if one fails)."""
        webhook = Webhook(secret)
        return [webhook.verify(r.body, r.headers) for r in self.received]

    async def wait_for(self, count: int, timeout_s: float = 60.0) -> list[Received]:
        """Wait until ``count`` requests arrived (or fail after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received


@contextlib.asynccontextmanager
async def webhook_receiver(host: str = "127.0.0.1") -> AsyncIterator[WebhookReceiver]:
    """Serve on ``host`` (a free port) for the block."""
    receiver: WebhookReceiver

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        receiver.received.append(Received(request.path_qs, {k.lower(): v for k, v in request.headers.items()}, body))
        receiver.arrived.set()
        answer = receiver.answers.popleft() if receiver.answers else receiver.default
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    app = web.Application(client_max_size=1024**2)
    app.router.add_route("*", "/{tail:.*}", handle)
    # Handlers still answering (a scripted delay) are cancelled at cleanup, not waited for.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver = WebhookReceiver(url=f"http://{host}:{port}")
    try:
        yield receiver
    finally:
        await runner.cleanup()
