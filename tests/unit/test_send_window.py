"""Send windows: the next moment a step may go out, in the right time zone, across DST switches."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from proto.sequence import SendWindow
from services.common.send_window import Window, next_send_time

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def window(**fields: object) -> Window:
    return Window.of(SendWindow(**fields))  # type: ignore[arg-type]


def at(zone: ZoneInfo, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=zone)  # type: ignore[misc]


def test_without_a_window_the_due_time_stands() -> None:
    due = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)

    assert next_send_time(due, None) == due


def test_inside_the_window_the_due_time_stands() -> None:
    business = window(start="09:00", end="17:00", timezone="Europe/Berlin")
    due = at(BERLIN, 2026, 1, 14, 10, 30)

    assert next_send_time(due, business) == due


def test_before_the_window_waits_for_its_opening_the_same_day() -> None:
    business = window(start="09:00", end="17:00", timezone="Europe/Berlin")

    assert next_send_time(at(BERLIN, 2026, 1, 14, 6, 0), business) == at(BERLIN, 2026, 1, 14, 9, 0)


def test_after_the_window_waits_for_the_next_allowed_day() -> None:
    weekdays = window(start="09:00", end="17:00", timezone="Europe/Berlin", days=["Mon", "Tue", "Wed", "Thu", "Fri"])
    friday_evening = at(BERLIN, 2026, 1, 16, 18, 0)

    assert next_send_time(friday_evening, weekdays) == at(BERLIN, 2026, 1, 19, 9, 0)  # Monday


def test_the_end_of_the_window_is_exclusive() -> None:
    business = window(start="09:00", end="17:00", timezone="Europe/Berlin")

    assert next_send_time(at(BERLIN, 2026, 1, 14, 17, 0), business) == at(BERLIN, 2026, 1, 15, 9, 0)


def test_a_window_ending_at_midnight_includes_the_last_minute() -> None:
    evening = window(start="20:00", end="24:00", timezone="Europe/Berlin")
    due = at(BERLIN, 2026, 1, 14, 23, 59)

    assert next_send_time(due, evening) == due


def test_the_opening_hour_is_local_on_both_sides_of_the_spring_forward_switch() -> None:
    business = window(start="09:00", end="17:00", timezone="Europe/Berlin")
    # Berlin moves from UTC+1 to UTC+2 on Sunday 29 March 2026.
    before = next_send_time(datetime(2026, 3, 28, 20, 0, tzinfo=UTC), business)
    after = next_send_time(datetime(2026, 3, 29, 20, 0, tzinfo=UTC), business)

    assert before == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)  # 09:00 CEST, the switch happened overnight
    assert after == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
    assert before.astimezone(BERLIN).hour == after.astimezone(BERLIN).hour == 9


def test_the_opening_hour_is_local_after_the_fall_back_switch() -> None:
    business = window(start="09:00", end="17:00", timezone="America/New_York")
    # New York moves from UTC-4 to UTC-5 on Sunday 1 November 2026.
    due = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)  # Saturday 23:00 EDT

    assert next_send_time(due, business) == datetime(2026, 11, 1, 14, 0, tzinfo=UTC)  # 09:00 EST


def test_an_opening_inside_the_skipped_hour_opens_just_after_it() -> None:
    night = window(start="02:30", end="05:00", timezone="Europe/Berlin")
    # 02:30 does not exist in Berlin on 29 March 2026: clocks jump from 02:00 to 03:00.
    due = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)

    opened = next_send_time(due, night)

    assert opened.astimezone(BERLIN) == at(BERLIN, 2026, 3, 29, 3, 30)


def test_lead_time_zone_is_used_when_the_window_says_lead() -> None:
    mornings = window(start="09:00", end="12:00", timezone="lead", fallback_timezone="UTC")
    due = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)  # 13:00 in Berlin, 07:00 in New York

    assert next_send_time(due, mornings, "America/New_York") == at(NEW_YORK, 2026, 1, 14, 9, 0)
    assert next_send_time(due, mornings, "Europe/Berlin") == at(BERLIN, 2026, 1, 15, 9, 0)


@pytest.mark.parametrize("lead_zone", [None, "", "Not/AZone"])
def test_a_lead_without_a_known_time_zone_gets_the_fallback(lead_zone: str | None) -> None:
    mornings = window(start="09:00", end="12:00", timezone="lead", fallback_timezone="America/New_York")
    due = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)

    assert next_send_time(due, mornings, lead_zone) == at(NEW_YORK, 2026, 1, 14, 9, 0)


def test_a_fixed_time_zone_ignores_the_leads() -> None:
    berlin = window(start="09:00", end="12:00", timezone="Europe/Berlin")
    due = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)

    assert next_send_time(due, berlin, "America/New_York") == at(BERLIN, 2026, 1, 15, 9, 0)


def test_a_single_allowed_day_is_found_up_to_a_week_ahead() -> None:
    wednesdays = window(start="10:00", end="11:00", timezone="UTC", days=["Wed"])
    wednesday_noon = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)

    assert next_send_time(wednesday_noon, wednesdays) == datetime(2026, 1, 21, 10, 0, tzinfo=UTC)


def test_the_result_is_always_utc() -> None:
    business = window(start="09:00", end="17:00", timezone="Europe/Berlin")

    assert next_send_time(at(BERLIN, 2026, 1, 14, 10, 0), business).tzinfo is UTC
