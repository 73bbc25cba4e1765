"""``healingwork dispatcher``: consumes ``email.dispatch`` and sends each message over SMTP."""

from __future__ import annotations

import asyncio
from functools import partial

from proto.messages import AnyMessage, EmailDispatch
from services.common.bus import make_consumer, run_consumer
from services.common.config import DispatcherSettings
from services.common.health import serve_health
from services.common.runtime import Runtime, service_runtime, supervise, worker_ready
from services.dispatcher.dispatch import Dispatcher
from services.dispatcher.smtp import SmtpTarget, SmtpTransport

CONSUMER_GROUP = "healingwork-dispatcher"


async def run_dispatcher(settings: DispatcherSettings, *, handle_signals: bool = True) -> None:
    """Run until SIGTERM/SIGINT (or until the runtime's stop event is set)."""
    async with service_runtime(settings, handle_signals=handle_signals) as runtime:
        await serve_dispatcher(settings, runtime)


async def serve_dispatcher(settings: DispatcherSettings, runtime: Runtime) -> None:
    transport = SmtpTransport(SmtpTarget.from_url(settings.smtp_url), settings.smtp_timeout_s)
    dispatcher = Dispatcher(settings, runtime.pool, transport)

    async def on_message(message: AnyMessage) -> None:
        if isinstance(message, EmailDispatch):
            await dispatcher.dispatch(message.message_id)

    consumer = make_consumer(settings, settings.topic_email_dispatch, CONSUMER_GROUP)
    tasks = [asyncio.create_task(run_consumer(consumer, on_message, stop=runtime.stop, name="dispatcher"))]
    if settings.health_port:
        ready = partial(worker_ready, runtime, consumer)
        tasks.append(asyncio.create_task(serve_health(settings.health_port, ready, runtime.stop)))
    await supervise(runtime.stop, tasks)
