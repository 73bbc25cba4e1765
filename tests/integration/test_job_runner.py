"""Every job runs the same way: a run id and the job name on every log line, an advisory lock so two
runs never overlap, one clear line and a failed outcome when it fails, metrics pushed to a real HTTP
Pushgateway stand-in, errors reported to a real HTTP Sentry stand-in."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from services.common.config import ConfigError
from services.jobs.runner import JobContext, run_job
from tests.support.jobs import job_settings
from tests.support.recorder import recording_http_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def _counts(ctx: JobContext) -> dict[str, int]:
    async with ctx.pool.connection() as conn:
        await conn.execute("SELECT 1")
    return {"done": 3}


async def _boom(ctx: JobContext) -> dict[str, int]:
    raise RuntimeError("boom: the template table is missing")


async def test_successful_run_stamps_every_log_line_with_job_and_run_id(
    migrated_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    outcome = await run_job("demo", job_settings(migrated_database_url), _counts, run_id="run-1")

    assert (outcome.status, outcome.exit_code, outcome.counts) == ("succeeded", 0, {"done": 3})
    records = [r for r in caplog.records if r.name.startswith("services.jobs")]
    assert [r.getMessage() for r in records] == ["job started", "job succeeded"]
    assert {(r.job, r.run_id) for r in records} == {("demo", "run-1")}  # type: ignore[attr-defined]


async def test_failing_run_has_exit_code_1_and_one_error_line(
    migrated_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = await run_job("demo", job_settings(migrated_database_url), _boom)

    assert (outcome.status, outcome.exit_code) == ("failed", 1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["job demo failed: RuntimeError: boom: the template table is missing"]


async def test_two_concurrent_runs_of_one_job_never_overlap(migrated_database_url: str) -> None:
    settings = job_settings(migrated_database_url)
    inside, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def slow(ctx: JobContext) -> dict[str, int]:
        nonlocal calls
        calls += 1
        inside.set()
        await release.wait()
        return {}

    first = asyncio.create_task(run_job("demo", settings, slow))
    await asyncio.wait_for(inside.wait(), 10)
    second = await run_job("demo", settings, slow)
    other_job = await run_job("other", settings, _counts)
    release.set()

    assert (second.status, second.exit_code) == ("skipped", 0)
    assert other_job.status == "succeeded"  # the lock is per job name
    assert (await first).status == "succeeded"
    assert calls == 1
    assert (await run_job("demo", settings, _counts)).status == "succeeded"  # released after the run


async def test_metrics_are_pushed_to_the_pushgateway(migrated_database_url: str) -> None:
    with recording_http_server() as gateway:
        settings = job_settings(migrated_database_url, pushgateway_url=gateway.url)
        await run_job("demo", settings, _counts)
        await run_job("demo", settings, _boom)

    success, failure = gateway.requests
    assert (success.method, success.path) == ("POST", "/metrics/job/healingwork-demo")
    assert 'healingwork_job_items{kind="done"} 3.0' in success.text
    assert "healingwork_job_last_success_timestamp_seconds" in success.text
    assert "healingwork_job_failed 0.0" in success.text
    # A failure must not overwrite the last success time (push-add replaces only what it sends).
    assert (failure.method, failure.path) == ("POST", "/metrics/job/healingwork-demo")
    assert "healingwork_job_failed 1.0" in failure.text
    assert "healingwork_job_last_failure_timestamp_seconds" in failure.text
    assert "last_success" not in failure.text


async def test_unreachable_pushgateway_does_not_fail_the_run(migrated_database_url: str) -> None:
    with recording_http_server() as gateway:
        gateway.status = 503
        outcome = await run_job("demo", job_settings(migrated_database_url, pushgateway_url=gateway.url), _counts)

    assert outcome.status == "succeeded"
    assert len(gateway.requests) == 3  # bounded retries


async def test_failure_is_reported_to_sentry(migrated_database_url: str) -> None:
    with recording_http_server() as sentry:
        dsn = sentry.url.replace("http://", "http://publickey@") + "/42"
        await run_job("demo", job_settings(migrated_database_url, sentry_dsn=dsn), _boom)

    [envelope] = sentry.requests
    assert (envelope.method, envelope.path) == ("POST", "/api/42/envelope/")
    assert "boom: the template table is missing" in envelope.text
    assert '"job":"demo"' in envelope.text.replace(" ", "")


def _healingwork_job(name: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(DATABASE_URL=database_url, DB_CONNECT_TIMEOUT_S="2")
    return subprocess.run(
        [sys.executable, "-m", "services", "job", name],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_job_on_an_unreachable_database_exits_1_with_one_clear_line() -> None:
    result = _healingwork_job("purge", "postgresql://nobody@127.0.0.1:9/none")

    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    errors = [line for line in lines if line["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["msg"].startswith("job purge failed: cannot reach PostgreSQL")
    assert "exc" not in errors[0]
    assert all(line["job"] == "purge" and line["run_id"] == lines[0]["run_id"] for line in lines)


def test_cli_job_that_fails_on_its_data_exits_1_with_one_clear_line(database_url: str) -> None:
    result = _healingwork_job("retry-failed", database_url)  # a database without the schema

    assert result.returncode == 1
    errors = [line for line in map(json.loads, result.stderr.splitlines()) if line["level"] == "error"]
    assert [e["msg"] for e in errors] == ['job retry-failed failed: UndefinedTable: relation "messages" does not exist']
    assert "Traceback" in errors[0]["exc"]  # for whoever debugs it, in the same line


async def test_sentry_dsn_without_sentry_sdk_is_a_configuration_error(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # what an install without the extra looks like

    with pytest.raises(ConfigError, match="SENTRY_DSN is set but sentry-sdk is not installed"):
        await run_job("demo", job_settings(migrated_database_url, sentry_dsn="http://k@127.0.0.1:9/1"), _counts)


def test_cli_job_succeeds_with_exit_0_and_json_lines(migrated_database_url: str) -> None:
    result = _healingwork_job("retry-failed", migrated_database_url)

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines[-1]["msg"] == "job succeeded"
    assert lines[-1]["counts"]["requeued"] == 0
    assert {(line["service"], line["job"]) for line in lines} == {("job", "retry-failed")}


def test_cli_job_ended_by_sigterm_exits_143_with_one_line(migrated_database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["DATABASE_URL"] = migrated_database_url
    with psycopg.connect(migrated_database_url) as blocker:
        blocker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")  # the job will wait on it
        process = subprocess.Popen(
            [sys.executable, "-m", "services", "job", "retry-failed"],
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with psycopg.connect(migrated_database_url, autocommit=True) as watcher:
                deadline = time.monotonic() + 30
                while not watcher.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = 'healingwork' AND wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                ).fetchone():
                    assert time.monotonic() < deadline, "the job never reached the locked table"
                    time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        blocker.rollback()

    assert process.returncode == 143
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert [line["msg"] for line in lines if line["level"] == "error"] == [
        "job retry-failed failed: terminated before it finished"
    ]
