"""Duration strings of the Sequence resource ("0s", "90m", "48h", "2d", "1h30m")."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"([0-9]+)(d|h|m|s)")
_WHOLE = re.compile(r"([0-9]+(d|h|m|s))+")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """Parse a duration string; raises ValueError naming the text when it is not one."""
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"{text!r} is not a duration such as 0s, 90m, 48h, 2d or 1h30m")
    seconds = sum(int(amount) * _UNIT_SECONDS[unit] for amount, unit in _PART.findall(text))
    return timedelta(seconds=seconds)
