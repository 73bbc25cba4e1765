"""Send windows: the earliest moment at or after a due time when a Sequence may send, in a time zone.

Pure functions over aware datetimes with ``zoneinfo``, so daylight-saving changes are handled by the
tz database: a window opening at 09:00 opens at 09:00 local time on both sides of a DST switch, and a
local opening time that does not exist on a spring-forward day opens at the first instant after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from proto.sequence import WEEKDAYS, SendWindow

LEAD = "lead"


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo | None:
    """The IANA zone ``name``, or None when tzdata does not know it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


@dataclass(frozen=True)
class Window:
    """A validated send window: minutes after local midnight, ISO weekdays (Mon=0), a zone rule."""

    start_min: int
    end_min: int
    days: frozenset[int]
    timezone: str
    fallback_timezone: str

    @classmethod
    def of(cls, spec: SendWindow) -> Window:
        return cls(
            start_min=_minutes(spec.start),
            end_min=_minutes(spec.end),
            days=frozenset(WEEKDAYS.index(day) for day in spec.days),
            timezone=spec.timezone,
            fallback_timezone=spec.fallback_timezone,
        )

    def zone_for(self, lead_timezone: str | None) -> ZoneInfo:
        """The zone the window is read in for a lead: its own (when the window says ``lead`` and the lead's
        zone is known), else the fallback; an unknown name falls back to UTC rather than failing a send."""
        name = self.timezone
        if name == LEAD:
            name = lead_timezone if lead_timezone and zone(lead_timezone) else self.fallback_timezone
        return zone(name) or ZoneInfo("UTC")


def _local(day: datetime, minutes: int, tz: ZoneInfo) -> datetime:
    """The instant of local wall-clock ``minutes`` after midnight on ``day``'s date, in ``tz``.

    A wall time skipped by a spring-forward switch is read with the offset before the switch, so a
    09:00 opening never falls in a gap and a 02:30 opening on that day becomes 03:30 (PEP 495, fold=0).
    """
    midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
    if minutes >= 24 * 60:
        return (midnight + timedelta(days=1)).astimezone(UTC)
    wall = midnight.replace(hour=minutes // 60, minute=minutes % 60)
    return wall.astimezone(UTC)


def next_send_time(due: datetime, window: Window | None, lead_timezone: str | None = None) -> datetime:
    """The earliest instant at or after ``due`` (aware) inside ``window``; ``due`` itself when there is no
    window or it already is inside. Always returns an aware UTC datetime."""
    due = due.astimezone(UTC)
    if window is None:
        return due
    tz = window.zone_for(lead_timezone)
    local_due = due.astimezone(tz)
    for offset in range(8):
        day = (local_due + timedelta(days=offset)) if offset else local_due
        day = datetime(day.year, day.month, day.day, tzinfo=tz)
        if day.weekday() not in window.days:
            continue
        opens = _local(day, window.start_min, tz)
        closes = _local(day, window.end_min, tz)
        if due < closes and opens < closes:
            return max(due, opens)
    raise AssertionError("a window with at least one day always opens within a week")
