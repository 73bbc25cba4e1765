"""The keyed request limiter: a token bucket per key, refilled continuously, bounded in memory."""

from __future__ import annotations

import pytest

from services.intake.rate_limit import KeyedRateLimiter, RateLimited


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_limit_in_a_burst_then_waits() -> None:
    clock = FakeClock()
    limiter = KeyedRateLimiter(3, clock=clock)

    waits = [limiter.take("ip:203.0.113.7") for _ in range(4)]

    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(20.0)  # one request per 20 s at 3/min


def test_the_bucket_refills_with_time() -> None:
    clock = FakeClock()
    limiter = KeyedRateLimiter(3, clock=clock)
    for _ in range(3):
        limiter.take("k")

    clock.now += 20.0

    assert limiter.take("k") == 0.0
    assert limiter.take("k") > 0.0


def test_keys_do_not_share_budgets() -> None:
    limiter = KeyedRateLimiter(1, clock=FakeClock())

    assert [limiter.take("client:a"), limiter.take("client:b"), limiter.take("client:a")][:2] == [0.0, 0.0]
    assert limiter.take("client:a") > 0.0


def test_a_refused_request_spends_nothing() -> None:
    clock = FakeClock()
    limiter = KeyedRateLimiter(1, clock=clock)
    limiter.take("k")
    for _ in range(10):
        limiter.take("k")

    clock.now += 60.0

    assert limiter.take("k") == 0.0


def test_check_raises_with_a_whole_second_retry_after() -> None:
    limiter = KeyedRateLimiter(600, clock=FakeClock())
    for _ in range(600):
        limiter.check("k")

    with pytest.raises(RateLimited) as raised:
        limiter.check("k")

    assert raised.value.retry_after_s == pytest.approx(0.1)
    assert raised.value.retry_after_header == "1"


def test_memory_is_bounded_by_forgetting_the_least_recently_used_key() -> None:
    limiter = KeyedRateLimiter(1, clock=FakeClock(), max_buckets=2)
    limiter.take("a")
    limiter.take("b")
    limiter.take("a")  # a is now the most recently used
    limiter.take("c")  # forgets b

    assert limiter.take("a") > 0.0
    assert limiter.take("b") == 0.0


def test_a_limit_below_one_per_minute_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        KeyedRateLimiter(0)
