"""A small per-process limiter: at most N events per key per window, in bounded memory.

For routes that must not carry Litestar's request-level rate limit (tracking links: many people behind
one NAT; provider webhooks) but whose writes must still be bounded: the route asks :meth:`allow` for a
key it chose (the client IP, a message id) and decides itself what "over the limit" means (a 429, or an
answer that records nothing). Like the request limits it counts per process: N replicas admit up to N
times the limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class KeyedLimiter:
    """At most ``limit`` allowed calls per key in each ``window_s`` (fixed windows), remembering at
    most ``max_keys`` keys (the oldest are forgotten first: a forgotten key starts afresh)."""

    def __init__(
        self,
        limit: int,
        *,
        window_s: float = 60.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> bool:
        """Count one call for ``key``; False when the key has used its ``limit`` in the current window."""
        now = self._clock()
        started, count = self._windows.get(key, (now, 0))
        if now - started >= self.window_s:
            started, count = now, 0
        if count >= self.limit:
            return False
        self._windows.pop(key, None)  # re-inserted last: the dict's order is the eviction order
        self._windows[key] = (started, count + 1)
        while len(self._windows) > self._max_keys:
            del self._windows[next(iter(self._windows))]
        return True

    def retry_after(self, key: str) -> int:
        """Whole seconds until ``key``'s window ends (at least 1)."""
        started, _ = self._windows.get(key, (self._clock(), 0))
        return max(1, math.ceil(started + self.window_s - self._clock()))
