"""`healingwork dev` as a user runs it: a fresh data directory, a POST of a website lead, an .eml in
the mail directory within 10 seconds, and Ctrl-C leaving no process behind; on Tansu (the default) and
on Apache Kafka (`--broker kafka`)."""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support.platform import free_port
from tests.support.services import BROKERS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"`healingwork dev` never printed {needle!r}; output:\n{''.join(seen)}")


@pytest.mark.parametrize("broker", BROKERS)
def test_dev_delivers_a_website_lead_as_eml_and_stops_cleanly(tmp_path: Path, broker: str) -> None:
    port = free_port()
    mail_dir = tmp_path / "mail"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services",
            "dev",
            "--port",
            str(port),
            "--mail-dir",
            str(mail_dir),
            "--data-dir",
            str(tmp_path / "dev"),
            "--broker",
            broker,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = _wait_for_line(process, "Press Ctrl-C to stop", timeout=120)
        assert any("curl" in line for line in output)
        family = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/leads",
            data=json.dumps(
                {"email": "mae@example.com", "first_name": "Mae", "source": "website", "consent": {"marketing": True}}
            ).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        posted = time.monotonic()
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202

        files: list[Path] = []
        while not files and time.monotonic() - posted < 10:
            files = list(mail_dir.glob("*.eml"))
            time.sleep(0.1)
        assert files, "no .eml within 10 seconds"
        message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
        assert message["To"].addresses[0].addr_spec == "mae@example.com"

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        time.sleep(0.5)
        leftovers = [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        assert leftovers == [], f"processes left running: {leftovers}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_every_process_dev_started_is_gone_within_seconds_when_dev_is_killed_with_sigkill(tmp_path: Path) -> None:
    """SIGKILL leaves `dev` no chance to stop anything: each child it started gets a parent-death
    signal from the kernel, and stops (the services within their SHUTDOWN_GRACE_S, 5 s in `dev`)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services",
            "dev",
            "--port",
            str(port),
            "--mail-dir",
            str(tmp_path / "mail"),
            "--data-dir",
            str(tmp_path / "dev"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    descendants: list[psutil.Process] = []
    try:
        _wait_for_line(process, "Press Ctrl-C to stop", timeout=120)
        descendants = psutil.Process(process.pid).children(recursive=True)
        commands = {" ".join(child.cmdline()[:4]) for child in descendants}
        assert any("services intake" in command for command in commands), commands
        assert any("postgres" in command for command in commands), commands
        assert any("broker" in command for command in commands), commands

        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        _gone, alive = psutil.wait_procs(descendants, timeout=5 + 5)
        survivors = [f"{child.pid} {' '.join(child.cmdline()[:4])}" for child in alive if _running(child)]
        assert survivors == [], f"processes outlived `healingwork dev`: {survivors}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for child in descendants:  # survivors of a failed run must not outlive the test either
            if _running(child):
                child.kill()


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _post(url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait_for_emails(mail_dir: Path, count: int, timeout: float = 30) -> list[email.message.EmailMessage]:
    deadline = time.monotonic() + timeout
    files: list[Path] = []
    while time.monotonic() < deadline:
        files = sorted(mail_dir.glob("*.eml"))
        if len(files) >= count:
            break
        time.sleep(0.1)
    assert len(files) >= count, f"{len(files)} .eml files, wanted {count}"
    messages = [email.message_from_bytes(path.read_bytes(), policy=email.policy.default) for path in files]
    return [message for message in messages if isinstance(message, email.message.EmailMessage)]


def test_dev_honours_auth_forms_double_opt_in_and_rate_limits_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    mail_dir = tmp_path / "mail"
    origin = "http://localhost:3000"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")},
        "AUTH_MODE": "required",
        "PUBLIC_FORM_ORIGINS": origin,
        "DOUBLE_OPT_IN": "public-forms",
        "FORM_RATE_LIMIT_PER_MINUTE": "2",
    }
    command = [sys.executable, "-m", "services", "dev", "--port", str(port), "--mail-dir", str(mail_dir)]
    process = subprocess.Popen(
        [*command, "--data-dir", str(tmp_path / "dev")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = "".join(_wait_for_line(process, "Press Ctrl-C to stop", timeout=120))
        assert f"-H 'Origin: {origin}'" in output  # the printed example is a public form
        base = f"http://127.0.0.1:{port}"
        lead = json.dumps(
            {"email": "mae@example.com", "first_name": "Mae", "source": "website", "consent": {"marketing": True}}
        ).encode()
        json_type = {"Content-Type": "application/json"}

        assert _post(f"{base}/v1/leads", lead, json_type)[0] == 401  # AUTH_MODE=required is honoured
        assert _post(f"{base}/v1/leads", lead, {**json_type, "Origin": origin}) == (202, b'{"status":"received"}')
        [confirmation] = _wait_for_emails(mail_dir, 1)
        assert confirmation["Subject"] == "Please confirm your subscription"
        body = confirmation.get_body(("plain",))
        assert body is not None
        found = re.search(re.escape(base) + r"/confirm/[A-Za-z0-9_.-]+", body.get_content())
        assert found is not None, body.get_content()
        link = found.group(0)

        status, page = _post(link, b"", {})  # the form's POST (the second request in the form budget)
        assert status == 200
        assert b"Subscription confirmed" in page
        welcome = _wait_for_emails(mail_dir, 2)[1]
        assert welcome["Subject"] == "Welcome to healingwork, Mae"
        # FORM_RATE_LIMIT_PER_MINUTE=2 is honoured: the third form request in the minute is refused.
        assert _post(f"{base}/v1/leads", lead, {**json_type, "Origin": origin})[0] == 429

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
