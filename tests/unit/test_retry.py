"""backoff_delay and retry_async: bounded attempts, exponential backoff with full jitter."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from services.common.retry import backoff_delay, retry_async

SAMPLES = 2000


class Flaky:
    """Fails with the given errors in turn, then returns ``result``; counts its calls."""

    def __init__(self, errors: Sequence[BaseException], result: str = "done") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


# --- backoff_delay --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 10.0), (30, 10.0)]
)
def test_backoff_delay_stays_within_zero_and_the_capped_exponential_ceiling(attempt: int, ceiling: float) -> None:
    delays = [backoff_delay(attempt, base_s=0.5, max_s=10.0) for _ in range(SAMPLES)]

    assert all(0 <= d <= ceiling for d in delays)


def test_backoff_delay_is_jittered_across_the_whole_range() -> None:
    delays = [backoff_delay(4, base_s=1.0, max_s=60.0) for _ in range(SAMPLES)]

    assert min(delays) < 8.0 * 0.1
    assert max(delays) > 8.0 * 0.9
    assert len(set(delays)) > SAMPLES // 2


# --- retry_async ----------------------------------------------------------------------------------


async def test_first_success_is_returned_without_retrying() -> None:
    operation = Flaky([])

    assert await retry_async(operation, retry_on=(ConnectionError,), attempts=3, base_delay_s=0.001) == "done"
    assert operation.calls == 1


async def test_listed_exceptions_are_retried_until_success() -> None:
    operation = Flaky([ConnectionError("1"), TimeoutError("2")], result="ok")

    result = await retry_async(
        operation, retry_on=(ConnectionError, TimeoutError), attempts=5, base_delay_s=0.001, max_delay_s=0.002
    )

    assert result == "ok"
    assert operation.calls == 3


async def test_subclasses_of_listed_exceptions_are_retried() -> None:
    operation = Flaky([ConnectionRefusedError("refused")])

    assert await retry_async(operation, retry_on=(OSError,), attempts=2, base_delay_s=0.001) == "done"
    assert operation.calls == 2


async def test_unlisted_exception_propagates_at_once_without_retrying() -> None:
    error = ValueError("bad input")
    operation = Flaky([error])

    with pytest.raises(ValueError, match="bad input") as raised:
        await retry_async(operation, retry_on=(ConnectionError,), attempts=5, base_delay_s=0.001)

    assert raised.value is error
    assert operation.calls == 1


async def test_gives_up_after_attempts_and_reraises_the_last_error() -> None:
    errors = [ConnectionError(f"failure {n}") for n in range(1, 6)]
    operation = Flaky(errors)

    with pytest.raises(ConnectionError) as raised:
        await retry_async(operation, retry_on=(ConnectionError,), attempts=4, base_delay_s=0.001, max_delay_s=0.002)

    assert operation.calls == 4
    assert str(raised.value) == "failure 4"


async def test_success_on_the_last_attempt_is_returned() -> None:
    operation = Flaky([ConnectionError()] * 2)

    assert await retry_async(operation, retry_on=(ConnectionError,), attempts=3, base_delay_s=0.001) == "done"
    assert operation.calls == 3


async def test_a_single_attempt_never_retries() -> None:
    operation = Flaky([ConnectionError("only")])

    with pytest.raises(ConnectionError, match="only"):
        await retry_async(operation, retry_on=(ConnectionError,), attempts=1, base_delay_s=0.001)

    assert operation.calls == 1


async def test_each_retry_is_logged_as_a_warning_naming_the_operation(caplog: pytest.LogCaptureFixture) -> None:
    operation = Flaky([ConnectionError("a"), ConnectionError("b")])

    with caplog.at_level(logging.WARNING, logger="services.common.retry"):
        await retry_async(operation, retry_on=(ConnectionError,), attempts=3, base_delay_s=0.001, what="kafka connect")

    records = [r for r in caplog.records if r.name == "services.common.retry"]
    assert [r.attempt for r in records] == [1, 2]  # type: ignore[attr-defined]
    assert all(r.what == "kafka connect" for r in records)  # type: ignore[attr-defined]


def test_backoff_delay_for_a_huge_attempt_number_stays_within_the_cap() -> None:
    assert 0 <= backoff_delay(1025, 60.0, 21600.0) <= 21600.0


async def test_retry_async_with_zero_attempts_is_a_clear_error() -> None:
    async def operation() -> int:
        return 1

    with pytest.raises(ValueError, match="attempts"):
        await retry_async(operation, retry_on=(OSError,), attempts=0)
