"""A service told to stop must stop: the shutdown clock, bounded shutdown steps, and a last-resort exit.

SIGTERM starts the clock. Work in flight (a dispatcher's batch, an HTTP request) may finish until the
*drain deadline*; closing the clients (Kafka consumer and producer, the pool, the health server) must be
done by the *deadline*, ``SHUTDOWN_GRACE_S`` after the signal, whatever is unreachable. Every step that
waits on the network is run through :func:`within`, which abandons it at the deadline. If the process is
still alive a few seconds after the deadline (a step that ignored its cancellation, a thread stuck in
a DNS lookup), the watchdog armed by :func:`arm_exit_watchdog` ends it, so no pod or ``healingwork dev``
child lingers idle for minutes after it was told to stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import uvloop

log = logging.getLogger(__name__)

T = TypeVar("T")

# The part of the grace period kept for closing clients after the work in flight (at most this much,
# at most a quarter of the grace).
TEARDOWN_RESERVE_S = 5.0
# A shutdown step whose deadline already passed still gets this long to try (a clean close is cheap
# when its peer answers).
STEP_FLOOR_S = 0.2
# How long after the deadline the watchdog ends a process that has not exited by itself.
WATCHDOG_MARGIN_S = 3.0

# How long the tasks a service left behind (abandoned at a deadline) get to end once it returned.
LEFTOVER_WAIT_S = 0.5

# time.monotonic() of the first SIGTERM/SIGINT of this process (None: not signalled, e.g. in-process tests).
_signalled_at: float | None = None


def note_stop_signal() -> float:
    """Record that the process was told to stop (by a signal); returns the time of the first signal."""
    global _signalled_at
    if _signalled_at is None:
        _signalled_at = time.monotonic()
    return _signalled_at


class ShutdownClock:
    """The deadlines of one service's shutdown: ``grace_s`` from the stop signal (or, in a process
    that was not signalled, from the first time a deadline is asked for)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._started_at: float | None = None

    def start(self) -> None:
        """Start the clock now, unless it already runs; a signal received earlier counts from the signal."""
        if self._started_at is None:
            self._started_at = _signalled_at if _signalled_at is not None else time.monotonic()

    def deadline(self) -> float:
        """``time.monotonic()`` by which every shutdown step must have ended."""
        self.start()
        assert self._started_at is not None
        return self._started_at + self.grace_s

    @property
    def drain_s(self) -> float:
        """The part of the grace period work in flight may use (the rest is kept for closing)."""
        return self.grace_s - min(TEARDOWN_RESERVE_S, self.grace_s / 4)

    def drain_deadline(self) -> float:
        """``time.monotonic()`` by which work in flight must have ended."""
        return self.deadline() - self.grace_s + self.drain_s


def seconds_until(deadline: float) -> float:
    """Seconds from now until ``deadline`` (a ``time.monotonic()`` value), never less than the step floor."""
    return max(STEP_FLOOR_S, deadline - time.monotonic())


async def within(step: Awaitable[T], deadline: float, what: str) -> bool:
    """Await ``step`` until ``deadline``; past it, cancel the step and go on without waiting for it.

    Returns whether the step ended in time. An error of the step is logged, never raised: a failed
    close must not keep the next one from running. Unlike ``asyncio.wait_for`` this does not wait for
    the cancelled step to finish, so a step that ignores its cancellation cannot hold the process.
    """
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds_until(deadline))
    if not done:
        task.cancel()
        log.warning("shutdown step abandoned at its deadline", extra={"step": what})
        return False
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("shutdown step failed", extra={"step": what, "error": repr(error)})
    return True


def arm_exit_watchdog(deadline: float) -> None:
    """End the process ``WATCHDOG_MARGIN_S`` after ``deadline`` if it has not exited by then.

    Only for a process of its own (``healingwork <service>``), never in a test's event loop. A daemon
    thread: it does not keep a process alive that exits in time.
    """

    def expire() -> None:
        log.error("shutdown did not finish within the grace period; exiting now", extra={"deadline_s": deadline})
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(max(0.0, deadline + WATCHDOG_MARGIN_S - time.monotonic()), expire)
    timer.daemon = True
    timer.name = "shutdown-watchdog"
    timer.start()


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's coroutine in a new event loop, like ``asyncio.run``, but bounded at the end.

    ``asyncio.run`` cancels the tasks left when ``main`` returns and waits for every one of them; a
    task that shields work from cancellation (a send's outcome that must be recorded) and waits for
    a server that is gone would hold the process for minutes. Here they get ``LEFTOVER_WAIT_S``, and
    are then abandoned with the loop: the process exits; what they did not record is what the
    reconcile jobs find (messages in ``sending``).

    The loop is uvloop's (libuv, in C): the services' hot paths are callbacks and socket reads, where
    the standard loop's Python costs a measurable share of every message (docs/performance.md).
    """
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        try:
            leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers, timeout=LEFTOVER_WAIT_S))
                abandoned = sorted(task.get_name() for task in leftovers if not task.done())
                if abandoned:
                    log.warning("tasks abandoned at exit", extra={"tasks": abandoned})
            loop.run_until_complete(_bounded(loop.shutdown_asyncgens()))
        finally:
            asyncio.set_event_loop(None)
            # Not closed: closing a loop with abandoned tasks would run their cleanup into a closed loop.


async def _bounded(step: Awaitable[None]) -> None:
    await within(step, time.monotonic() + LEFTOVER_WAIT_S, "close the async generators")
