"""Request budgets by key: a token bucket per key, in this process.

A caller's key is decided by the edge *after* authentication (``services.intake.auth``): an
authenticated client counts by its client id, whatever headers it sends; a public form and an
unauthenticated caller count by the client IP as resolved through ``TRUSTED_PROXIES``. So a header a
caller can write itself (``X-Client-Id``, a spoofed ``X-Forwarded-For``) never chooses or creates a
bucket, and nobody's failed requests count against a client they merely name.

Any route may take a budget: ``limiter.take("ip:" + ip)`` returns the seconds to wait (0.0 when the
request may proceed), so the tracking and webhook routes use the same limiter with keys of their own.
No web framework here; :class:`RateLimited` is the domain error the problem table maps to 429.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from services.common.errors import CallerError

# Buckets kept at most per limiter. Past it the least recently used bucket is forgotten (a full bucket,
# in any realistic load: a key unseen for a while has refilled), so memory stays bounded under a flood of
# distinct IPs.
MAX_BUCKETS = 100_000


class RateLimited(CallerError):
    """The caller used its budget; ``retry_after_s`` says when the next request may pass (429)."""

    message = "Too many requests; retry after the time in Retry-After."

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(self.message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1 (the ``Retry-After`` value)."""
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass
class _Bucket:
    tokens: float
    updated: float


class KeyedRateLimiter:
    """``per_minute`` requests per key, in bursts of up to ``per_minute`` (a token bucket refilled
    continuously). Thread-safe; ``clock`` is monotonic seconds (tests inject their own)."""

    def __init__(
        self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = MAX_BUCKETS
    ) -> None:
        if per_minute < 1:
            raise ValueError("a rate limit allows at least one request per minute")
        self.per_minute = per_minute
        self._rate_per_s = per_minute / 60.0
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one request of ``key``'s budget: 0.0 if it may proceed, else the seconds until it may
        (nothing is spent then)."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(tokens=float(self.per_minute), updated=now)
                self._buckets[key] = bucket
                if len(self._buckets) > self._max_buckets:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(self.per_minute), bucket.tokens + elapsed * self._rate_per_s)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self._rate_per_s

    def check(self, key: str) -> None:
        """:meth:`take`, raising :class:`RateLimited` when ``key`` has no budget left."""
        wait = self.take(key)
        if wait > 0.0:
            raise RateLimited(wait)


@dataclass(frozen=True)
class RequestLimits:
    """The intake's limiters: ``requests`` for authenticated clients (by client id) and for failed or
    anonymous callers (by IP), ``forms`` for public form submissions and confirmations (by IP)."""

    requests: KeyedRateLimiter
    forms: KeyedRateLimiter

    @classmethod
    def of(cls, per_minute: int, form_per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> RequestLimits:
        """From ``RATE_LIMIT_PER_MINUTE`` and ``FORM_RATE_LIMIT_PER_MINUTE``."""
        return cls(KeyedRateLimiter(per_minute, clock=clock), KeyedRateLimiter(form_per_minute, clock=clock))


def client_key(client_id: object) -> str:
    """The bucket of an authenticated API client (however it authenticated)."""
    return f"client:{client_id}"


def ip_key(ip: str) -> str:
    """The bucket of a caller known only by its (proxy-resolved) IP."""
    return f"ip:{ip}"
