"""``healingwork job …`` arguments and settings, and the stats query parsing: pure functions, no servers."""

from __future__ import annotations

from datetime import date, timedelta

import msgspec
import pytest

from services.cli import build_parser, main
from services.common.config import BusSettings, ConfigError, JobSettings, load_settings
from services.intake.stats_query import InvalidQuery, parse_range, parse_sequence
from services.jobs.aggregate_stats import default_days
from services.jobs.commands import stats_days


def test_job_topic_names_default_to_the_services_topic_names() -> None:
    bus = {f.name: f.default for f in msgspec.structs.fields(BusSettings) if f.name.startswith("topic_")}
    job = {f.name: f.default for f in msgspec.structs.fields(JobSettings) if f.name.startswith("topic_")}
    assert job
    assert job == {name: bus[name] for name in job}


def test_jobs_need_a_database_but_not_kafka() -> None:
    settings = load_settings(JobSettings, {"DATABASE_URL": "postgresql://db/healingwork"})
    assert settings.pushgateway_url is None
    with pytest.raises(ConfigError) as error:
        load_settings(JobSettings, {"DATABASE_URL": "postgresql://db/x", "PUSHGATEWAY_URL": "pushgateway:9091"})
    assert error.value.problems == ["PUSHGATEWAY_URL must be an absolute http(s) URL such as https://mail.example.com"]


def test_job_settings_without_a_database_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["job", "purge"])
    assert exit_.value.code == 2
    assert "healingwork job purge: invalid configuration" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["job", "aggregate-stats", "--day", "2026-01-01", "--days", "3"], "not allowed with argument"),
        (["job", "aggregate-stats", "--day", "01/02/2026"], "must be a date as YYYY-MM-DD"),
        (["job", "retry-failed", "--batch-size", "0"], "must be a positive whole number"),
        (["job", "purge", "--batch-size", "many"], "must be a positive whole number"),
        (["job", "vacuum"], "invalid choice: 'vacuum'"),
    ],
)
def test_bad_job_arguments_exit_2_with_one_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_aggregate_stats_days_come_from_the_flags_or_the_window() -> None:
    parser = build_parser()
    today = date.today()
    assert stats_days(parser.parse_args(["job", "aggregate-stats", "--day", "2026-01-05"]), 2) == [date(2026, 1, 5)]
    assert len(stats_days(parser.parse_args(["job", "aggregate-stats", "--days", "7"]), 2)) == 7
    window = stats_days(parser.parse_args(["job", "aggregate-stats"]), 2)
    assert window == default_days(2)
    assert window[-1] - window[0] == timedelta(days=1)
    assert window[-1] in (today, today + timedelta(days=1))  # UTC may be a day ahead of local time


def test_stats_range_defaults_to_the_last_30_days() -> None:
    assert parse_range(None, None, date(2026, 3, 31)) == (date(2026, 3, 2), date(2026, 3, 31))
    assert parse_range("2026-01-01", None, date(2026, 1, 2)) == (date(2026, 1, 1), date(2026, 1, 2))


def test_stats_range_reports_every_bad_date() -> None:
    with pytest.raises(InvalidQuery) as error:
        parse_range("soon", "later", date(2026, 1, 1))
    assert [e.field for e in error.value.errors] == ["to", "from"]


def test_stats_sequence_is_namespace_and_name_or_a_name_in_default() -> None:
    assert parse_sequence("marketing/welcome") == ("marketing", "welcome")
    assert parse_sequence("welcome") == ("default", "welcome")
    for bad in ("", "marketing/", "a/b/c"):
        with pytest.raises(InvalidQuery):
            parse_sequence(bad)
