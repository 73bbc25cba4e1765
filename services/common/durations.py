"""Duration strings of the Sequence resource ("0s", "90m", "48h", "2d", "1h30m"), bounded.

A step waits at most :data:`MAX_STEP_DELAY` (365 days) after the previous one. The bound is what keeps
``now + delay`` a representable date in every process that computes a due time (Python's datetime ends
in year 9999); the CRD's schema enforces the same bound at ``kubectl apply``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

MAX_STEP_DELAY = timedelta(days=365)
MAX_STEP_DELAY_S = int(MAX_STEP_DELAY.total_seconds())

_PART = re.compile(r"([0-9]+)(d|h|m|s)")
_WHOLE = re.compile(r"([0-9]+(d|h|m|s))+")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """Parse a duration string; raises ValueError naming the text when it is not one, or when it is
    longer than :data:`MAX_STEP_DELAY`."""
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"{text!r} is not a duration such as 0s, 90m, 48h, 2d or 1h30m")
    # Whole seconds in Python ints: a 31-digit amount is a number here, never an OverflowError.
    seconds = sum(int(amount) * _UNIT_SECONDS[unit] for amount, unit in _PART.findall(text))
    if seconds > MAX_STEP_DELAY_S:
        raise ValueError(f"{text!r} is longer than the maximum delay of a step, {MAX_STEP_DELAY.days}d")
    return timedelta(seconds=seconds)


def due_after(start: datetime, delay_s: int) -> datetime:
    """``start`` plus a stored step delay, the delay capped at :data:`MAX_STEP_DELAY`.

    Stored delays are validated on the way in; the cap is defence in depth for a row written another
    way (an older version, a hand edit): such a step falls due after a year instead of raising
    OverflowError inside the transaction that enrolls a lead into every matching Sequence.
    """
    return start + timedelta(seconds=min(max(delay_s, 0), MAX_STEP_DELAY_S))
