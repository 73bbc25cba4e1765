"""SmtpTarget.from_url: how SMTP_URL selects host, port, credentials and TLS."""

from __future__ import annotations

import pytest

from services.common.config import DispatcherSettings, check_smtp_url, load_settings
from services.dispatcher.smtp import SmtpTarget
from tests.unit.test_config import dispatcher_env, only_problem_of


def test_plain_smtp_url_uses_the_submission_port_and_opportunistic_starttls() -> None:
    assert SmtpTarget.from_url("smtp://smtp.example.com") == SmtpTarget(
        hostname="smtp.example.com", port=587, username=None, password=None, implicit_tls=False, starttls=None
    )


def test_credentials_are_percent_decoded_and_starttls_can_be_turned_off() -> None:
    assert SmtpTarget.from_url("smtp://user:p%40ss@host:2525?starttls=never") == SmtpTarget(
        hostname="host", port=2525, username="user", password="p@ss", implicit_tls=False, starttls=False
    )


def test_percent_encoded_username_is_decoded() -> None:
    target = SmtpTarget.from_url("smtp://mailer%40example.com:s%3Acret%2F1@smtp.example.com")

    assert target.username == "mailer@example.com"
    assert target.password == "s:cret/1"


def test_starttls_required() -> None:
    target = SmtpTarget.from_url("smtp://host?starttls=required")

    assert target.starttls is True
    assert target.implicit_tls is False
    assert target.port == 587


def test_starttls_auto_is_the_same_as_leaving_it_out() -> None:
    assert SmtpTarget.from_url("smtp://host?starttls=auto") == SmtpTarget.from_url("smtp://host")


def test_smtps_uses_implicit_tls_on_port_465() -> None:
    assert SmtpTarget.from_url("smtps://host") == SmtpTarget(
        hostname="host", port=465, username=None, password=None, implicit_tls=True, starttls=None
    )


def test_smtps_ignores_a_starttls_option_and_keeps_an_explicit_port() -> None:
    target = SmtpTarget.from_url("smtps://u:p@host:2465?starttls=never")

    assert target.implicit_tls is True
    assert target.starttls is None
    assert target.port == 2465


def test_user_without_password() -> None:
    target = SmtpTarget.from_url("smtp://user@localhost:1025")

    assert target.username == "user"
    assert target.password is None
    assert target.hostname == "localhost"
    assert target.port == 1025


@pytest.mark.parametrize("mode", ["require", "yes", "true", "off"])
def test_mistyped_starttls_option_is_rejected_not_treated_as_never(mode: str) -> None:
    with pytest.raises(ValueError, match="starttls"):
        SmtpTarget.from_url(f"smtp://user:secret@mail.example.com?starttls={mode}")
    assert check_smtp_url(f"smtp://mail.example.com?starttls={mode}") is not None


def test_credentials_with_starttls_never_are_refused_at_start_up_in_one_line() -> None:
    env = dispatcher_env(SMTP_URL="smtp://mailer:pw@relay.example.com:25?starttls=never")

    problem = only_problem_of(DispatcherSettings, env)

    assert problem.startswith("SMTP_URL has credentials and starttls=never: the password would cross the network")
    assert ":pw@" not in problem  # the URL holds a password: never echoed
    assert "\n" not in problem


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("smtp://mailer:pw@relay.local:25?starttls=never", "true"),  # a local relay, said explicitly
        ("smtp://relay.local:25?starttls=never", "false"),  # no credentials to protect
        ("smtp://mailer:pw@smtp.example.com:587", "false"),  # STARTTLS, required at connect (credentials)
        ("smtps://mailer:pw@smtp.example.com", "false"),
    ],
)
def test_settings_that_never_send_credentials_in_clear_are_accepted(url: str, allow: str) -> None:
    settings = load_settings(DispatcherSettings, dispatcher_env(SMTP_URL=url, SMTP_ALLOW_PLAINTEXT_AUTH=allow))

    assert settings.smtp_url == url
