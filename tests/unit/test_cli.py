"""``healingwork <command>`` as a process: configuration problems and unreachable databases are one
message and an exit status, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from services.common.config import DispatcherSettings, IntakeSettings, OperatorSettings, SchedulerSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_VARIABLES = {
    field.name.upper()
    for kind in (IntakeSettings, SchedulerSettings, DispatcherSettings, OperatorSettings)
    for field in msgspec.structs.fields(kind)
}


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any healingwork setting or libpq variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES and not k.startswith("PG")}
    env.update(extra)
    return env


def healingwork(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *args],
        env=env,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        ("intake", ["DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "HMAC_SECRET", "PUBLIC_BASE_URL"]),
        (
            "dispatcher",
            [
                "DATABASE_URL",
                "KAFKA_BOOTSTRAP_SERVERS",
                "HMAC_SECRET",
                "PUBLIC_BASE_URL",
                "FROM_EMAIL",
                "FROM_NAME",
                "SMTP_URL",
            ],
        ),
        ("scheduler", ["DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"]),
        ("migrate", ["DATABASE_URL"]),
        ("operator", ["DATABASE_URL"]),
    ],
)
def test_command_without_settings_lists_every_missing_variable_and_exits_2(command: str, missing: list[str]) -> None:
    result = healingwork(command, env=clean_env())

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"healingwork {command}: invalid configuration:")
    assert result.stderr.count("invalid configuration") == 1
    for name in missing:
        assert f"  - {name} is required but not set" in result.stderr
    assert result.stderr.count("is required but not set") == len(missing)
    assert result.stdout == ""


def test_sequences_apply_without_settings_exits_2() -> None:
    result = healingwork("sequences", "apply", "k8s/examples", env=clean_env())

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "healingwork sequences apply: invalid configuration:" in result.stderr
    assert "DATABASE_URL is required but not set" in result.stderr


def test_invalid_settings_are_reported_without_echoing_the_secret() -> None:
    secret = "short-private-value"
    result = healingwork("intake", env=clean_env(HMAC_SECRET=secret, PORT="70000"))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "HMAC_SECRET must be at least 32 bytes" in result.stderr
    assert "PORT='70000' is invalid" in result.stderr
    assert secret not in result.stderr


def test_migrate_against_an_unreachable_database_exits_1_with_one_line() -> None:
    result = healingwork("migrate", env=clean_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/x"))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("healingwork migrate: cannot reach PostgreSQL")


def test_unknown_command_is_a_usage_error() -> None:
    result = healingwork("frobnicate", env=clean_env())

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "usage: healingwork" in result.stderr


def test_dlq_replay_needs_ids_or_all() -> None:
    result = healingwork("dlq", "replay", env=clean_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/x"))

    assert result.returncode == 2
    assert "one of the arguments --id --all is required" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list"], "healingwork dlq list: cannot reach PostgreSQL"),
        (["replay", "--id", "not-a-uuid"], "healingwork dlq replay: --id 'not-a-uuid' is not a message id (a UUID)"),
    ],
)
def test_dlq_failures_are_one_line_and_exit_1(args: list[str], message: str) -> None:
    result = healingwork("dlq", *args, env=clean_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/x"))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(message)


@pytest.mark.parametrize(
    "command",
    [
        ["clients", "list"],
        ["clients", "revoke", "crm"],
        ["sequences", "apply", "-f", str(ROOT / "k8s" / "examples")],
    ],
    ids=["clients-list", "clients-revoke", "sequences-apply"],
)
def test_every_database_command_reports_an_unreachable_database_in_one_line(command: list[str]) -> None:
    result = healingwork(*command, env=clean_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/x"))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"healingwork {' '.join(command[:2])}: cannot reach PostgreSQL")


def test_dev_without_the_development_stack_is_one_clear_line() -> None:
    """The image ships `services`, `operators` and `proto` only; `healingwork dev` there names the way out.

    The image suite runs the real image; here the missing package is simulated by blocking its import.
    """
    code = "import sys; sys.modules['devstack'] = None; from services.cli import main; main(['dev'])"
    result = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "healingwork dev: the development stack is not installed here (it ships with a source checkout,"
        " not the image): run `make dev` in a clone of the repository"
    ]


def test_runtime_packages_do_not_import_the_development_stack() -> None:
    """Nothing the image runs may need `devstack` (its dependencies are not installed there)."""
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("services", "operators", "proto")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "cli.py" and "devstack" in path.read_text()
    ]
    assert offenders == []
