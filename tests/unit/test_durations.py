"""parse_duration: the delay strings of a Sequence step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.common.durations import MAX_STEP_DELAY, due_after, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0s", timedelta(0)),
        ("45s", timedelta(seconds=45)),
        ("90m", timedelta(minutes=90)),
        ("48h", timedelta(hours=48)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("007m", timedelta(minutes=7)),
    ],
)
def test_duration_strings_parse_to_their_length(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "1w", "-1h", "1.5h", "h", "1H", " 1h", "1h ", "1h 30m", "one hour", "1y"])
def test_non_durations_are_rejected_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration") as raised:
        parse_duration(text)

    assert repr(text) in str(raised.value)


def test_trailing_newline_is_not_a_duration() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("1h\n")


@pytest.mark.parametrize("text", ["365d", "8760h", "364d23h59m60s", "31536000s"])
def test_delays_up_to_the_maximum_of_365_days_are_accepted(text: str) -> None:
    assert parse_duration(text) <= MAX_STEP_DELAY


@pytest.mark.parametrize("text", ["365d1s", "366d", "999999999d", "9" * 31 + "s", "1" + "0" * 30 + "d"])
def test_delays_beyond_the_maximum_are_rejected_without_overflow(text: str) -> None:
    with pytest.raises(ValueError, match="longer than the maximum delay of a step, 365d"):
        parse_duration(text)


def test_a_stored_delay_beyond_the_maximum_is_capped_instead_of_overflowing() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)

    assert due_after(start, 10**30) == start + MAX_STEP_DELAY
    assert due_after(start, 90) == start + timedelta(seconds=90)
