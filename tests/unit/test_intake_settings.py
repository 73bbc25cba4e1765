"""The intake's authentication and rate-limit settings: safe defaults, clear errors."""

from __future__ import annotations

import pytest

from services.common.config import ClientsSettings, IntakeSettings, load_settings, signing_key_entries
from tests.unit.test_config import intake_env, only_problem_of, problems_of


def test_defaults_require_authentication_and_trust_no_proxy() -> None:
    settings = load_settings(IntakeSettings, intake_env())

    assert settings.auth_mode == "required"
    assert settings.trusted_proxies == ""
    assert settings.public_form_origins == ""
    assert (settings.rate_limit_per_minute, settings.form_rate_limit_per_minute) == (600, 10)


@pytest.mark.parametrize("value", ["off", "false", "none", "REQUIRED"])
def test_auth_mode_accepts_only_required_or_disabled(value: str) -> None:
    assert only_problem_of(IntakeSettings, intake_env(AUTH_MODE=value)).startswith("AUTH_MODE=")


def test_auth_can_be_disabled_explicitly() -> None:
    assert load_settings(IntakeSettings, intake_env(AUTH_MODE="disabled")).auth_mode == "disabled"


@pytest.mark.parametrize("value", ["10.0.0.0/8", "10.0.0.1, 192.168.0.0/16", "::1, fd00::/8"])
def test_trusted_proxies_are_ips_or_networks(value: str) -> None:
    assert load_settings(IntakeSettings, intake_env(TRUSTED_PROXIES=value)).trusted_proxies == value


def test_a_trusted_proxy_that_is_not_an_address_is_named() -> None:
    problem = only_problem_of(IntakeSettings, intake_env(TRUSTED_PROXIES="10.0.0.0/8, ingress-nginx"))

    assert problem.startswith("TRUSTED_PROXIES has 'ingress-nginx'")


@pytest.mark.parametrize("value", ["www.example.com", "https://www.example.com/form", "ftp://x.example", "*"])
def test_form_origins_must_be_origins(value: str) -> None:
    assert only_problem_of(IntakeSettings, intake_env(PUBLIC_FORM_ORIGINS=value)).startswith("PUBLIC_FORM_ORIGINS")


def test_clients_create_needs_real_signing_keys() -> None:
    problems = problems_of(ClientsSettings, {"DATABASE_URL": "postgresql://u@db/hw", "REQUEST_SIGNING_KEYS": "k:x"})

    assert len(problems) == 1
    assert problems[0].startswith("REQUEST_SIGNING_KEYS has the key 'k' whose secret must be at least 32 bytes")


def test_signing_keys_list_key_ids_and_secrets_current_first() -> None:
    value = f"2026-11:{'a1b2c3d4' * 8}, 2026-05:{'e5f6a7b8' * 8}"

    settings = load_settings(IntakeSettings, intake_env(REQUEST_SIGNING_KEYS=value))

    assert signing_key_entries(settings.request_signing_keys) == [
        ("2026-11", "a1b2c3d4" * 8),
        ("2026-05", "e5f6a7b8" * 8),
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("no-colon", "must list <key id>:<secret> entries"),
        (f"bad id!:{'a1b2c3d4' * 8}", "must list <key id>:<secret> entries"),
        (f"k:{'a1b2c3d4' * 8},k:{'e5f6a7b8' * 8}", "lists a key id twice"),
    ],
)
def test_malformed_signing_keys_are_named(value: str, problem: str) -> None:
    assert only_problem_of(IntakeSettings, intake_env(REQUEST_SIGNING_KEYS=value)).startswith(
        f"REQUEST_SIGNING_KEYS {problem}"
    )


def test_a_signing_key_may_not_reuse_hmac_secret() -> None:
    env = intake_env()
    problem = only_problem_of(IntakeSettings, {**env, "REQUEST_SIGNING_KEYS": f"k1:{env['HMAC_SECRET']}"})

    assert problem == "REQUEST_SIGNING_KEYS key 'k1' reuses HMAC_SECRET; generate its own (openssl rand -hex 32)"
    assert env["HMAC_SECRET"] not in problem
