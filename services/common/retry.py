"""The one retry helper: bounded attempts, exponential backoff with full jitter.

:func:`retry_async` retries one call a bounded number of times; loops that retry until they are stopped
(the outbox relay, the consumers) sleep :func:`backoff_delay` of their consecutive failures instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Full-jitter delay before retry number ``attempt`` (1-based): uniform in [0, min(max, base*2^(n-1))]."""
    # The exponent is capped: past 2^32 the ceiling is max_s anyway, and floats would overflow.
    ceiling = min(max_s, base_s * (2 ** min(max(attempt - 1, 0), 32)))
    return random.uniform(0, ceiling)


async def retry_async(
    operation: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...],
    attempts: int = 5,
    base_delay_s: float = 0.2,
    max_delay_s: float = 5.0,
    what: str = "operation",
) -> T:
    """Run ``operation`` until it succeeds, at most ``attempts`` times, sleeping with jitter between tries.

    Only exceptions in ``retry_on`` are retried; the last one propagates after the final attempt.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except retry_on as error:
            if attempt == attempts:
                raise
            delay = backoff_delay(attempt, base_delay_s, max_delay_s)
            log.warning(
                "retrying after failure",
                extra={"what": what, "attempt": attempt, "delay_s": round(delay, 3), "error": repr(error)},
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


async def retry_until_stopped(
    operation: Callable[[], Awaitable[T]],
    *,
    stop: asyncio.Event,
    retry_on: tuple[type[BaseException], ...],
    what: str,
    base_delay_s: float = 0.5,
    max_delay_s: float = 10.0,
    on_failure: Callable[[BaseException], None] | None = None,
) -> T | None:
    """Run ``operation`` until it succeeds, or until ``stop`` is set (then return ``None``).

    For a dependency a long-running service cannot work without but must outlive (Kafka at start-up):
    every failure is logged with what was unreachable, and retried after a backoff of at most
    ``max_delay_s``, forever. ``operation`` should bound its own time (a request timeout); it is
    cancelled anyway as soon as ``stop`` is set. Exceptions outside ``retry_on`` propagate.
    """
    attempt = 0
    while not stop.is_set():
        work = asyncio.ensure_future(operation())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            return None
        try:
            return work.result()
        except retry_on as error:
            attempt += 1
            if on_failure is not None:
                on_failure(error)
            delay = backoff_delay(attempt, base_delay_s, max_delay_s)
            log.warning(
                f"{what} unreachable; retrying",
                extra={"what": what, "attempt": attempt, "delay_s": round(delay, 3), "error": repr(error)},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
    return None
