"""The platform's services as real processes (``python -m services <command>``), for tests that
signal, kill and restart them the way Kubernetes or ``healingwork dev`` would."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.platform import FROM_EMAIL, FROM_NAME, free_port, topics_for

ROOT = Path(__file__).resolve().parents[2]


def service_env(database_url: str, bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of every service process of one test: private topics, fast polling, quiet logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TOPIC_"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_PARTITIONS": "2",
            "KAFKA_SESSION_TIMEOUT_S": "2",
            "OUTBOX_POLL_INTERVAL_S": "0.2",
            "SCHEDULER_POLL_INTERVAL_S": "0.2",
            "DB_CONNECT_TIMEOUT_S": "2",
            "HMAC_SECRET": secrets.token_hex(32),
            "SUPPRESSION_HASH_KEY": secrets.token_hex(32),
            "PUBLIC_BASE_URL": "https://go.example.com",
            "FROM_EMAIL": FROM_EMAIL,
            "FROM_NAME": FROM_NAME,
            "SMTP_URL": "smtp://127.0.0.1:1?starttls=never",
            "LOG_LEVEL": "INFO",
            # No metrics port unless a test asks for one (with a free port): 8080 is shared by every test.
            "HEALTH_PORT": "0",
            **{name.upper(): value for name, value in topics_for(prefix).items()},
            **extra,
        }
    )
    return env


class ServiceProcesses:
    """Starts services as processes with a log file each; kills whatever still runs at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{command}-{len(self.started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "services", command], env=env, cwd=ROOT, stdout=log, stderr=log
        )
        log.close()
        self.started.append(process)
        return process

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        index = self.started.index(process)
        [path] = self.log_dir.glob(f"*-{index}.log")
        return path.read_text(errors="replace")

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@contextmanager
def service_processes(log_dir: Path) -> Iterator[ServiceProcesses]:
    processes = ServiceProcesses(log_dir)
    try:
        yield processes
    finally:
        processes.stop_all()


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of GET ``url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def wait_for_status(url: str, status: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := http_status(url)) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} answered {seen}, not {status}, for {timeout:.0f}s")
        time.sleep(0.2)


def terminate_and_time(process: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """SIGTERM ``process``; returns the seconds it took to exit (fails after ``timeout``)."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=timeout)
    return time.monotonic() - started


__all__ = [
    "ServiceProcesses",
    "free_port",
    "http_status",
    "service_env",
    "service_processes",
    "terminate_and_time",
    "wait_for_status",
]
