"""``healingwork dispatcher``: consumes ``email.dispatch`` in batches and sends each message over SMTP.

The consumer is the entrypoint, run by the one consumer loop (:mod:`services.common.consumer`): fetch
up to DISPATCH_BATCH_SIZE records, hand their message ids to :meth:`Dispatcher.dispatch_batch` (which
claims, sends concurrently over the SMTP pool and commits each outcome), and commit the Kafka offsets
only after the whole batch is recorded in PostgreSQL. The next batch is fetched and started while one
is finishing (two at most), and offsets are committed in fetch order, so a command never waits for a
whole earlier batch before it is read.

Graceful shutdown (SIGTERM): stop fetching, let the batches in flight finish until the drain deadline
(SHUTDOWN_GRACE_S minus the time kept for closing), then cancel them — messages not yet handed to SMTP
are released (due again at once), the others end in their recorded state — and leave their offsets
uncommitted, so the next owner of the partition gets the commands again and the idempotent claim sends
only what was not sent.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from aiokafka import AIOKafkaConsumer

from proto.messages import AnyMessage, ConfirmationRequested, EmailDispatch
from services.common.bus import make_consumer
from services.common.config import DispatcherSettings
from services.common.consumer import BatchHandler, consume
from services.common.health import HealthServer
from services.common.runtime import Runtime, service_runtime, supervise, worker_ready
from services.common.shutdown import ShutdownClock, within
from services.dispatcher.confirmations import ConfirmationSender
from services.dispatcher.dispatch import Dispatcher
from services.dispatcher.rate import SharedRateLimiter
from services.dispatcher.smtp import SmtpPool, SmtpTarget

log = logging.getLogger(__name__)

CONSUMER_GROUP = "healingwork-dispatcher"
NAME = "dispatcher"


async def run_dispatcher(settings: DispatcherSettings, *, handle_signals: bool = True) -> None:
    """Run until SIGTERM/SIGINT (or until the runtime's stop event is set)."""
    # Bound first: a port that is taken is a start-up failure, before anything else started.
    health = await HealthServer.bind(settings.health_port) if settings.health_port else None
    async with service_runtime(settings, handle_signals=handle_signals) as runtime:
        await serve_dispatcher(settings, runtime, health)


async def serve_dispatcher(settings: DispatcherSettings, runtime: Runtime, health: HealthServer | None = None) -> None:
    smtp = SmtpPool(
        SmtpTarget.from_url(settings.smtp_url, allow_plaintext_auth=settings.smtp_allow_plaintext_auth),
        settings.smtp_timeout_s,
        size=settings.dispatch_concurrency,
        throttle_pause_s=settings.smtp_throttle_pause_s,
    )
    rate = SharedRateLimiter(runtime.pool, settings.smtp_rate_name, settings.smtp_rate_per_s)
    dispatcher = Dispatcher(settings, runtime.pool, smtp, rate)
    confirmations = ConfirmationSender(settings, runtime.pool, smtp, rate)
    consumer = make_consumer(
        settings, settings.topic_email_dispatch, CONSUMER_GROUP, max_poll_records=settings.dispatch_batch_size
    )
    tasks = [
        asyncio.create_task(
            consume_dispatch_commands(
                consumer,
                dispatcher,
                settings,
                runtime.stop,
                shutdown=runtime.shutdown,
                topics_ready=runtime.topics_ready,
                confirmations=confirmations,
            )
        )
    ]
    if health is not None:
        health.is_ready = partial(worker_ready, runtime, consumer)
        tasks.append(asyncio.create_task(health.serve(runtime.stop)))
    try:
        await supervise(runtime.stop, tasks, runtime.shutdown)
    finally:
        await within(smtp.close(), runtime.shutdown.deadline(), "close the SMTP connections")


def dispatch_handler(dispatcher: Dispatcher, confirmations: ConfirmationSender | None = None) -> BatchHandler:
    """Hand the message ids of a batch's ``email.dispatch`` commands to the dispatcher, and its
    ``lead.confirmation_requested`` commands to ``confirmations`` (double opt-in), both at once (other
    message types on the topic are not the dispatcher's)."""

    async def handle(messages: list[AnyMessage]) -> None:
        ids = [message.message_id for message in messages if isinstance(message, EmailDispatch)]
        confirming = [message.id for message in messages if isinstance(message, ConfirmationRequested)]
        work = []
        if ids:
            work.append(dispatcher.dispatch_batch(ids))
        if confirming and confirmations is not None:
            work.append(confirmations.send_batch(confirming))
        await asyncio.gather(*work)

    return handle


# Batches dispatched at once: the next batch is fetched and started while the previous one finishes
# (its slowest sends), so a command never waits for a whole batch before it is even read.
BATCHES_IN_FLIGHT = 2


async def consume_dispatch_commands(
    consumer: AIOKafkaConsumer,
    dispatcher: Dispatcher,
    settings: DispatcherSettings,
    stop: asyncio.Event,
    *,
    shutdown: ShutdownClock | None = None,
    topics_ready: asyncio.Event | None = None,
    confirmations: ConfirmationSender | None = None,
) -> None:
    """Fetch, dispatch and commit until ``stop`` is set, through the one consumer loop
    (:func:`services.common.consumer.consume`) with BATCHES_IN_FLIGHT batches at once."""
    await consume(
        consumer,
        dispatch_handler(dispatcher, confirmations),
        stop=stop,
        name=NAME,
        shutdown=shutdown or ShutdownClock(settings.shutdown_grace_s),
        topics_ready=topics_ready,
        max_records=settings.dispatch_batch_size,
        batches_in_flight=BATCHES_IN_FLIGHT,
    )
