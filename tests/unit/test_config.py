"""load_settings: every problem reported at once, secrets checked and never echoed, defaults applied."""

from __future__ import annotations

import secrets

import pytest

from services.common.config import (
    KNOWN_EXAMPLE_SECRETS,
    ConfigError,
    DatabaseSettings,
    DispatcherSettings,
    IntakeSettings,
    SchedulerSettings,
    check_bootstrap_servers,
    load_settings,
)


def intake_env(**overrides: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": "postgresql://healingwork:db-password@db:5432/healingwork",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-0:9092,kafka-1:9092",
        "HMAC_SECRET": secrets.token_hex(32),
        "PUBLIC_BASE_URL": "https://mail.example.com",
        "SUPPRESSION_HASH_KEY": secrets.token_hex(32),
    }
    env.update(overrides)
    return env


def dispatcher_env(**overrides: str) -> dict[str, str]:
    env = intake_env(
        FROM_EMAIL="hello@mail.example.com",
        FROM_NAME="The healingwork team",
        SMTP_URL="smtp://mailer:smtp-password@smtp.example.com:587",
    )
    env.update(overrides)
    return env


def problems_of(kind: type, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_settings(kind, env)
    return raised.value.problems


def only_problem_of(kind: type, env: dict[str, str]) -> str:
    problems = problems_of(kind, env)
    assert len(problems) == 1, problems
    return problems[0]


# --- every problem at once ------------------------------------------------------------------------


def test_intake_settings_with_empty_environ_reports_every_required_variable_at_once() -> None:
    problems = problems_of(IntakeSettings, {})

    assert problems == [
        "DATABASE_URL is required but not set",
        "KAFKA_BOOTSTRAP_SERVERS is required but not set",
        "HMAC_SECRET is required but not set",
        "PUBLIC_BASE_URL is required but not set",
        "SUPPRESSION_HASH_KEY is required but not set",
    ]


def test_dispatcher_settings_with_empty_environ_reports_every_required_variable_at_once() -> None:
    problems = problems_of(DispatcherSettings, {})

    assert {p.split()[0] for p in problems} == {
        "DATABASE_URL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "HMAC_SECRET",
        "PUBLIC_BASE_URL",
        "FROM_EMAIL",
        "FROM_NAME",
        "SMTP_URL",
    }
    assert all(p.endswith("is required but not set") for p in problems)


def test_database_settings_require_only_the_database_url() -> None:
    assert problems_of(DatabaseSettings, {}) == ["DATABASE_URL is required but not set"]


def test_scheduler_settings_require_the_database_and_the_broker() -> None:
    assert problems_of(SchedulerSettings, {}) == [
        "DATABASE_URL is required but not set",
        "KAFKA_BOOTSTRAP_SERVERS is required but not set",
    ]


def test_missing_and_invalid_variables_are_reported_together() -> None:
    env = intake_env(PORT="70000", PUBLIC_BASE_URL="ftp://mail.example.com", KAFKA_BOOTSTRAP_SERVERS="kafka")
    del env["HMAC_SECRET"]

    problems = problems_of(IntakeSettings, env)

    assert sorted(p.split()[0].split("=")[0] for p in problems) == [
        "HMAC_SECRET",
        "KAFKA_BOOTSTRAP_SERVERS",
        "PORT",
        "PUBLIC_BASE_URL",
    ]


def test_config_error_message_lists_each_problem_on_its_own_line() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(IntakeSettings, {})

    lines = str(raised.value).splitlines()
    assert lines[0] == "invalid configuration:"
    assert lines[1:] == [f"  - {p}" for p in raised.value.problems]


# --- valid settings and defaults ------------------------------------------------------------------


def test_valid_intake_environment_loads_with_defaults_applied() -> None:
    env = intake_env()

    settings = load_settings(IntakeSettings, env)

    assert settings.database_url == env["DATABASE_URL"]
    assert settings.kafka_bootstrap_servers == "kafka-0:9092,kafka-1:9092"
    assert settings.hmac_secret == env["HMAC_SECRET"]
    assert settings.public_base_url == "https://mail.example.com"
    assert settings.host == "0.0.0.0"
    assert settings.port == 8000
    assert settings.duplicate_window_hours == 24.0
    assert settings.max_body_bytes == 65536
    assert settings.relay_enabled is True
    assert settings.health_port == 8080
    assert settings.db_pool_min_size == 1
    assert settings.db_pool_max_size == 10
    assert settings.log_level == "INFO"
    assert settings.topic_leads_accepted == "leads.accepted"
    assert settings.topic_email_dispatch == "email.dispatch"
    assert settings.topic_email_events == "email.events"
    assert settings.topic_email_dlq == "email.dispatch.dlq"


def test_valid_dispatcher_environment_loads_with_defaults_applied() -> None:
    settings = load_settings(DispatcherSettings, dispatcher_env())

    assert settings.from_email == "hello@mail.example.com"
    assert settings.from_name == "The healingwork team"
    assert settings.smtp_url == "smtp://mailer:smtp-password@smtp.example.com:587"
    assert settings.smtp_timeout_s == 30.0
    assert settings.max_attempts == 8
    assert settings.retry_base_delay_s == 60.0
    assert settings.retry_max_delay_s == 6 * 3600.0


def test_variables_not_named_by_the_settings_are_ignored() -> None:
    settings = load_settings(DatabaseSettings, {"DATABASE_URL": "postgresql://db/x", "UNRELATED": "whatever"})

    assert settings.database_url == "postgresql://db/x"


def test_settings_are_read_from_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/from-process")
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "3")

    settings = load_settings(DatabaseSettings)

    assert settings.database_url == "postgresql://db/from-process"
    assert settings.db_pool_max_size == 3


# --- empty and whitespace -------------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_empty_required_variable_counts_as_unset(blank: str) -> None:
    assert only_problem_of(IntakeSettings, intake_env(HMAC_SECRET=blank)) == "HMAC_SECRET is required but not set"


@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_optional_variable_takes_the_default(blank: str) -> None:
    settings = load_settings(IntakeSettings, intake_env(PORT=blank, RELAY_ENABLED=blank, LOG_LEVEL=blank))

    assert settings.port == 8000
    assert settings.relay_enabled is True
    assert settings.log_level == "INFO"


def test_surrounding_whitespace_is_trimmed_before_parsing() -> None:
    settings = load_settings(IntakeSettings, intake_env(PORT=" 8081 ", PUBLIC_BASE_URL=" https://a.example.com\n"))

    assert settings.port == 8081
    assert settings.public_base_url == "https://a.example.com"


# --- numbers and booleans -------------------------------------------------------------------------


def test_integers_are_parsed_from_strings() -> None:
    settings = load_settings(IntakeSettings, intake_env(PORT="8081", DB_POOL_MAX_SIZE="25", KAFKA_PARTITIONS="12"))

    assert settings.port == 8081
    assert settings.db_pool_max_size == 25
    assert settings.kafka_partitions == 12


def test_floats_are_parsed_from_strings() -> None:
    settings = load_settings(IntakeSettings, intake_env(DUPLICATE_WINDOW_HOURS="1.5", DB_CONNECT_TIMEOUT_S="2"))

    assert settings.duplicate_window_hours == 1.5
    assert settings.db_connect_timeout_s == 2.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "70000"),
        ("PORT", "0"),
        ("PORT", "-1"),
        ("HEALTH_PORT", "65536"),
        ("DB_POOL_MIN_SIZE", "0"),
        ("MAX_BODY_BYTES", "-5"),
        ("DUPLICATE_WINDOW_HOURS", "0"),
        ("DUPLICATE_WINDOW_HOURS", "-1"),
    ],
)
def test_numbers_outside_their_bounds_are_rejected_naming_the_variable(name: str, value: str) -> None:
    problem = only_problem_of(IntakeSettings, intake_env(**{name: value}))

    assert problem.startswith(f"{name}={value!r} is invalid")


def test_port_70000_is_rejected_with_the_upper_bound() -> None:
    problem = only_problem_of(IntakeSettings, intake_env(PORT="70000"))

    assert "65535" in problem


def test_health_port_zero_is_accepted_to_turn_the_endpoint_off() -> None:
    assert load_settings(IntakeSettings, intake_env(HEALTH_PORT="0")).health_port == 0


@pytest.mark.parametrize("value", ["abc", "8000.5", "8k"])
def test_non_integer_is_rejected(value: str) -> None:
    problem = only_problem_of(IntakeSettings, intake_env(PORT=value))

    assert problem.startswith("PORT=")
    assert "int" in problem


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False), ("1", True), ("0", False)])
def test_booleans_are_parsed_from_strings(value: str, expected: bool) -> None:
    settings = load_settings(IntakeSettings, intake_env(RELAY_ENABLED=value))

    assert settings.relay_enabled is expected


def test_unrecognized_boolean_is_rejected() -> None:
    problem = only_problem_of(IntakeSettings, intake_env(RELAY_ENABLED="maybe"))

    assert problem.startswith("RELAY_ENABLED='maybe' is invalid")


# --- HMAC secret ----------------------------------------------------------------------------------


def test_random_token_hex_secret_is_accepted() -> None:
    secret = secrets.token_hex(32)

    assert load_settings(IntakeSettings, intake_env(HMAC_SECRET=secret)).hmac_secret == secret


def test_hmac_secret_shorter_than_32_bytes_is_rejected() -> None:
    problem = only_problem_of(IntakeSettings, intake_env(HMAC_SECRET=secrets.token_hex(16)[:31]))

    assert problem.startswith("HMAC_SECRET must be at least 32 bytes")


def test_hmac_secret_of_exactly_32_random_bytes_is_accepted() -> None:
    secret = secrets.token_hex(16)

    assert load_settings(IntakeSettings, intake_env(HMAC_SECRET=secret)).hmac_secret == secret


def test_hmac_secret_length_is_counted_in_bytes_not_characters() -> None:
    secret = "ÄÖÜäöüßéèêë" + "abcdefghij"  # 21 characters, 32 bytes in UTF-8

    assert load_settings(IntakeSettings, intake_env(HMAC_SECRET=secret)).hmac_secret == secret


@pytest.mark.parametrize("example", sorted(KNOWN_EXAMPLE_SECRETS))
def test_every_known_example_secret_is_rejected(example: str) -> None:
    problem = only_problem_of(IntakeSettings, intake_env(HMAC_SECRET=example))

    assert problem.startswith("HMAC_SECRET ")


@pytest.mark.parametrize(
    "example",
    [
        "please-change-me-this-is-not-a-secret",
        "0123456789abcdef0123456789abcdef",
        "0123456789ABCDEF0123456789ABCDEF",
        "changeme-" + "4f9a1c7e2b8d6035af19c3d5",
        "CHANGE-ME-" + "4f9a1c7e2b8d6035af19xyz",
        "this-is-an-example-hmac-secret-4f9a1c7e",
    ],
)
def test_long_known_example_secret_is_rejected_as_an_example_value(example: str) -> None:
    problem = only_problem_of(IntakeSettings, intake_env(HMAC_SECRET=example))

    assert problem.startswith("HMAC_SECRET is a known example value")


@pytest.mark.parametrize("low_variety", ["a" * 40, "ab" * 20, "1234567" * 6])
def test_hmac_secret_with_too_little_variety_is_rejected(low_variety: str) -> None:
    problem = only_problem_of(IntakeSettings, intake_env(HMAC_SECRET=low_variety))

    assert problem.startswith("HMAC_SECRET has too little variety")


def test_dispatcher_checks_its_hmac_secret_too() -> None:
    problem = only_problem_of(DispatcherSettings, dispatcher_env(HMAC_SECRET="changeme"))

    assert problem.startswith("HMAC_SECRET ")


# --- secrets never echoed -------------------------------------------------------------------------


def test_rejected_hmac_secret_value_never_appears_in_the_error() -> None:
    for secret in ["Tr0ub4dor&3-short", "a" * 40, "please-change-me-this-is-not-a-secret", "x7Q!z" * 3]:
        with pytest.raises(ConfigError) as raised:
            load_settings(IntakeSettings, intake_env(HMAC_SECRET=secret))

        assert secret not in str(raised.value)
        assert secret not in repr(raised.value)


def test_database_url_password_never_appears_in_the_error() -> None:
    password = "s3cr3t-db-pa55word"
    for url in [f"mysql://admin:{password}@db/x", f"http://admin:{password}@db/x", f"admin:{password}@db/x"]:
        with pytest.raises(ConfigError) as raised:
            load_settings(DatabaseSettings, {"DATABASE_URL": url, "DB_POOL_MIN_SIZE": "0"})

        assert password not in str(raised.value)


def test_smtp_url_password_never_appears_in_the_error() -> None:
    password = "smtp-pa55word-do-not-print"
    with pytest.raises(ConfigError) as raised:
        load_settings(DispatcherSettings, dispatcher_env(SMTP_URL=f"smtp://mailer:{password}@smtp.example.com:abc"))

    assert password not in str(raised.value)


# --- URLs, addresses, servers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["/leads", "mail.example.com", "ftp://mail.example.com", "https://", "mailto:hello@example.com"]
)
def test_public_base_url_must_be_an_absolute_http_url(url: str) -> None:
    problem = only_problem_of(IntakeSettings, intake_env(PUBLIC_BASE_URL=url))

    assert problem.startswith("PUBLIC_BASE_URL must be an absolute http(s) URL")


@pytest.mark.parametrize("url", ["http://localhost:8000", "https://mail.example.com/base/"])
def test_public_base_url_accepts_http_and_https(url: str) -> None:
    assert load_settings(IntakeSettings, intake_env(PUBLIC_BASE_URL=url)).public_base_url == url


@pytest.mark.parametrize("url", ["mysql://u@db/x", "sqlite:///tmp/x.db", "db:5432/x", "http://db/x"])
def test_database_url_with_a_non_postgres_scheme_is_rejected(url: str) -> None:
    problem = only_problem_of(DatabaseSettings, {"DATABASE_URL": url})

    assert problem.startswith("DATABASE_URL must be a postgresql:// URL")


@pytest.mark.parametrize("url", ["postgresql://u:p@db:5432/x", "postgres://db/x"])
def test_database_url_accepts_both_postgres_schemes(url: str) -> None:
    assert load_settings(DatabaseSettings, {"DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize("servers", ["kafka", "kafka:", ":9092", "kafka:abc", "kafka:9092,", "kafka:9092,,b:9092"])
def test_malformed_kafka_bootstrap_servers_are_rejected(servers: str) -> None:
    problem = only_problem_of(IntakeSettings, intake_env(KAFKA_BOOTSTRAP_SERVERS=servers))

    assert problem.startswith("KAFKA_BOOTSTRAP_SERVERS must be a comma-separated list of host:port")


@pytest.mark.parametrize("servers", ["kafka:9092", "a:9092, b:9093", "[::1]:9092", "10.0.0.1:9092,10.0.0.2:9092"])
def test_well_formed_kafka_bootstrap_servers_are_accepted(servers: str) -> None:
    assert load_settings(IntakeSettings, intake_env(KAFKA_BOOTSTRAP_SERVERS=servers)).kafka_bootstrap_servers == servers


@pytest.mark.parametrize("address", ["not-an-email", "hello@", "@example.com", "two@at@example.com"])
def test_invalid_from_email_is_rejected(address: str) -> None:
    problem = only_problem_of(DispatcherSettings, dispatcher_env(FROM_EMAIL=address))

    assert problem.startswith("FROM_EMAIL is not a valid email address")


def test_blank_topic_name_falls_back_to_the_default() -> None:
    settings = load_settings(IntakeSettings, intake_env(TOPIC_LEADS_ACCEPTED="  "))

    assert settings.topic_leads_accepted == "leads.accepted"


@pytest.mark.parametrize("url", ["http://smtp.example.com", "smtp://", "smtp://smtp.example.com:abc"])
def test_invalid_smtp_url_is_rejected(url: str) -> None:
    problem = only_problem_of(DispatcherSettings, dispatcher_env(SMTP_URL=url))

    assert problem.startswith("SMTP_URL ")


@pytest.mark.parametrize(
    "url", ["smtp://smtp.example.com", "smtps://u:p@smtp.example.com:465", "smtp://localhost:1025"]
)
def test_valid_smtp_url_is_accepted(url: str) -> None:
    assert load_settings(DispatcherSettings, dispatcher_env(SMTP_URL=url)).smtp_url == url


@pytest.mark.parametrize("servers", ["kafka:9092;other:9092", "http://kafka:9092", "kafka:99999", "kafka 1:9092"])
def test_malformed_bootstrap_servers_are_rejected(servers: str) -> None:
    assert check_bootstrap_servers(servers) is not None


@pytest.mark.parametrize("servers", ["kafka:9092", "kafka-0.kafka.svc:9092,kafka-1.kafka.svc:9092", "[::1]:9092"])
def test_well_formed_bootstrap_servers_are_accepted(servers: str) -> None:
    assert check_bootstrap_servers(servers) is None


async def test_kafka_fetch_max_wait_reaches_every_consumer_and_rejects_zero() -> None:
    from services.common.bus import make_consumer

    settings = load_settings(SchedulerSettings, intake_env(KAFKA_FETCH_MAX_WAIT_S="0.05"))
    consumer = make_consumer(settings, settings.topic_leads_accepted, "test")  # aiokafka wants a running loop
    # aiokafka keeps the option only as a private attribute; this pins that the setting is passed on.
    assert consumer._fetch_max_wait_ms == 50
    with pytest.raises(ConfigError, match="KAFKA_FETCH_MAX_WAIT_S"):
        load_settings(SchedulerSettings, intake_env(KAFKA_FETCH_MAX_WAIT_S="0"))
