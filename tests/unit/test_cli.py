"""``healingwork <command>`` as a process: configuration problems and unreachable databases are one
message and an exit status, never a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import pytest

from services.common.config import DispatcherSettings, IntakeSettings, OperatorSettings, SchedulerSettings
from tests.support.platform import free_port

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
        (
            "intake",
            ["DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "HMAC_SECRET", "PUBLIC_BASE_URL", "SUPPRESSION_HASH_KEY"],
        ),
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
        ("webhooks", ["DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "HMAC_SECRET"]),
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


UNREACHABLE_DATABASE = "postgresql://nobody@127.0.0.1:1/x"


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["clients", "list"], {}),
        (["clients", "create", "crm"], {"HMAC_SECRET": "9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c0e2b4d6f8a1c3e5b"}),
        (["sequences", "apply", "k8s/examples"], {}),
        (["dlq", "list"], {}),
        (["migrate"], {}),
    ],
)
def test_a_command_that_cannot_reach_postgresql_says_so_in_one_line_and_exits_1(
    args: list[str], extra: dict[str, str]
) -> None:
    result = healingwork(*args, env=clean_env(DATABASE_URL=UNREACHABLE_DATABASE, **extra))

    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith(f"healingwork {' '.join(args[:2])}")
    ]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot reach PostgreSQL" in result.stderr


def test_a_job_that_cannot_reach_postgresql_says_so_in_one_line_and_exits_1() -> None:
    result = healingwork("job", "retry-failed", env=clean_env(DATABASE_URL=UNREACHABLE_DATABASE))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # JSON log lines: "job started" (INFO), then one line saying why it failed.
    [failure] = [line for line in result.stderr.splitlines() if '"level": "error"' in line]
    assert "job retry-failed failed: cannot reach PostgreSQL" in failure


def test_the_operator_without_kubernetes_credentials_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    env = clean_env(
        DATABASE_URL=UNREACHABLE_DATABASE, KUBECONFIG=str(tmp_path / "missing"), HOME=str(tmp_path), HEALTH_PORT="0"
    )
    env.pop("KUBERNETES_SERVICE_HOST", None)
    result = healingwork("operator", env=env)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "healingwork operator: cannot reach the Kubernetes API: no credentials (not in a pod with a service"
        " account, and no kubeconfig: set KUBECONFIG)"
    ]


def service_env(**extra: str) -> dict[str, str]:
    """A worker's settings with PostgreSQL and Kafka both unreachable."""
    return clean_env(
        DATABASE_URL=UNREACHABLE_DATABASE,
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        HMAC_SECRET="9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c0e2b4d6f8a1c3e5b",
        SUPPRESSION_HASH_KEY="4b1d8e3a6c9f2e5b8a1d4c7f0e3b6a9d2c5f8e1b4a7d0c3f",
        PUBLIC_BASE_URL="https://go.example.com",
        FROM_EMAIL="team@example.com",
        FROM_NAME="Tests",
        SMTP_URL="smtp://127.0.0.1:1?starttls=never",
        LOG_LEVEL="WARNING",
        SHUTDOWN_GRACE_S="4",
        **extra,
    )


def readiness(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@pytest.mark.parametrize("command", ["scheduler", "dispatcher", "webhooks", "intake"])
def test_a_service_starts_without_postgresql_and_kafka_reports_not_ready_says_why_and_stops_when_told(
    command: str,
) -> None:
    """A Kubernetes pod whose dependencies are down stays up, unready, and names what it waits for; it
    is ready as soon as they answer, without the restart delays of a crash loop."""
    port = free_port()
    # The intake serves /healthz on its API port and /metrics on HEALTH_PORT: two ports of its own.
    health_port = free_port() if command == "intake" else port
    env = service_env(HEALTH_PORT=str(health_port), PORT=str(port), HOST="127.0.0.1")
    process = subprocess.Popen(
        [sys.executable, "-m", "services", command], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}/{'readyz' if command != 'intake' else 'healthz'}"
        deadline = time.monotonic() + 30
        while readiness(url) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if command == "intake":
            assert readiness(url) == 200  # alive and serving: leads wait in PostgreSQL when Kafka is down
        else:
            assert readiness(url) == 503
        time.sleep(1.0)  # a few attempts to reach Kafka
        assert process.poll() is None
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        assert time.monotonic() - stopped_at < 4 + 3  # SHUTDOWN_GRACE_S, and the watchdog's margin
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    assert "Traceback" not in stderr
    assert f"Kafka at {env['KAFKA_BOOTSTRAP_SERVERS']} unreachable; retrying" in stderr


@pytest.mark.parametrize(
    ("command", "variable", "message"),
    [
        ("scheduler", "HEALTH_PORT", "cannot listen on 0.0.0.0:{port} for /healthz, /readyz and /metrics"),
        ("dispatcher", "HEALTH_PORT", "cannot listen on 0.0.0.0:{port} for /healthz, /readyz and /metrics"),
        ("webhooks", "HEALTH_PORT", "cannot listen on 0.0.0.0:{port} for /healthz, /readyz and /metrics"),
        ("intake", "PORT", "cannot listen on 0.0.0.0:{port}"),
        ("intake", "HEALTH_PORT", "cannot listen on 0.0.0.0:{port} for /healthz, /readyz and /metrics"),
    ],
)
def test_a_service_whose_port_is_taken_says_so_in_one_line_and_exits_1(
    command: str, variable: str, message: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = healingwork(command, env=service_env(**{variable: str(port)}))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"healingwork {command}: {message.format(port=port)}: Address already in use"
    ]
