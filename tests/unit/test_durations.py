"""parse_duration: the delay strings of a Sequence step."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.common.durations import parse_duration


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
