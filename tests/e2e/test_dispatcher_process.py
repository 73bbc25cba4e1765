"""The dispatcher as a real process against PostgreSQL, the broker and an SMTP server: killed in the
middle of a batch it loses nothing and duplicates nothing outside the recorded ``sending`` window;
stopped with SIGTERM it finishes or releases its batch and exits in time."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devstack.mailsink import MailSink
from services.common.config import DatabaseSettings
from services.common.db import open_pool, transaction
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead
from tests.support.platform import apply_examples, smtp_url_of, wait_until
from tests.support.processes import service_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 60


def dispatcher_env(database_url: str, bootstrap: str, prefix: str, sink: MailSink, **extra: str) -> dict[str, str]:
    """A dispatcher's environment (:func:`service_env`), paced so that a kill or a SIGTERM lands mid-batch."""
    return service_env(
        database_url,
        bootstrap,
        prefix,
        HEALTH_PORT="0",
        FROM_NAME="Crash Tests",
        SMTP_URL=smtp_url_of(sink),
        DISPATCH_CONCURRENCY="2",
        SMTP_RATE_PER_S="25",
        SMTP_RATE_NAME=f"crash-{uuid.uuid4().hex}",
        LOG_LEVEL="WARNING",
        **extra,
    )


@pytest.fixture
def start_dispatcher(tmp_path: Path) -> Iterator[collections.abc.Callable[[dict[str, str]], subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"dispatcher-{len(processes)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "services", "dispatcher"], env=env, cwd=ROOT, stdout=log, stderr=log
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def queue_messages(database_url: str, count: int) -> list[uuid.UUID]:
    """``count`` leads, each with its welcome email queued and its email.dispatch command in the outbox."""
    pool = await open_pool(DatabaseSettings(database_url=database_url))
    try:
        async with transaction(pool) as conn:
            for i in range(count):
                lead_id = uuid.uuid4()
                await conn.execute(
                    """INSERT INTO leads (id, email, email_normalized, first_name, source, consent_marketing)
                       VALUES (%s, %s, %s, 'Lead', 'website', true)""",
                    (lead_id, f"lead{i}@example.com", f"lead{i}@example.com"),
                )
                await enroll_lead(conn, lead_id)
            steps = await emit_due_steps(conn, limit=count, topic=f"{database_url.rsplit('/', 1)[1]}")
        return [step.message_id for step in steps]
    finally:
        await pool.close()


def statuses(database_url: str) -> dict[str, list[uuid.UUID]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT id, status FROM messages").fetchall()
    result: dict[str, list[uuid.UUID]] = collections.defaultdict(list)
    for message_id, status in rows:
        result[status].append(message_id)
    return result


def deliveries(sink: MailSink) -> collections.Counter[str]:
    return collections.Counter(str(email["Message-ID"]) for email in sink.messages())


def message_header(message_id: uuid.UUID) -> str:
    return f"<{message_id}@example.com>"


@pytest.fixture
async def queued(migrated_database_url: str, topic_prefix: str) -> list[uuid.UUID]:
    await apply_examples(migrated_database_url)
    ids = await queue_messages(migrated_database_url, MESSAGES)
    # emit_due_steps wrote the commands for a placeholder topic; point them at this test's topic.
    with psycopg.connect(migrated_database_url) as conn:
        conn.execute("UPDATE outbox SET topic = %s", (f"{topic_prefix}email.dispatch",))
    return ids


async def test_killed_mid_batch_and_restarted_loses_nothing_and_duplicates_nothing_outside_the_window(
    migrated_database_url: str,
    kafka_bootstrap_servers: str,
    topic_prefix: str,
    mail_sink: MailSink,
    queued: list[uuid.UUID],
    start_dispatcher: collections.abc.Callable[[dict[str, str]], subprocess.Popen[bytes]],
) -> None:
    env = dispatcher_env(migrated_database_url, kafka_bootstrap_servers, topic_prefix, mail_sink)
    first = start_dispatcher(env)

    async def some_delivered() -> bool:
        return len(mail_sink.message_paths()) >= MESSAGES // 4

    await wait_until(some_delivered, timeout=60, what="a quarter of the batch delivered")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    at_kill = statuses(migrated_database_url)
    in_window = set(at_kill.get("sending", []))
    assert len(in_window) <= 2  # at most DISPATCH_CONCURRENCY messages are ever inside the window
    assert at_kill.get("queued"), "the kill must land in the middle of the batch"

    second = start_dispatcher(env)

    async def settled() -> bool:
        now = statuses(migrated_database_url)
        return not now.get("queued") and not now.get("retrying") and set(now.get("sending", [])) == in_window

    await wait_until(settled, timeout=90, what="every message outside the window sent")
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0

    final = statuses(migrated_database_url)
    assert sorted(final["sent"] + final.get("sending", [])) == sorted(queued)
    delivered = deliveries(mail_sink)
    for message_id in final["sent"]:
        assert delivered[message_header(message_id)] == 1, message_id  # delivered, exactly once
    for message_id in in_window:
        # Inside the recorded window: delivered at most once, and visible for the reconcile job.
        assert delivered[message_header(message_id)] <= 1
    assert sum(delivered.values()) == len(delivered)  # no duplicate anywhere


async def test_sigterm_mid_batch_finishes_the_sends_in_flight_leaves_the_rest_queued_and_exits_in_time(
    migrated_database_url: str,
    kafka_bootstrap_servers: str,
    topic_prefix: str,
    mail_sink: MailSink,
    queued: list[uuid.UUID],
    start_dispatcher: collections.abc.Callable[[dict[str, str]], subprocess.Popen[bytes]],
) -> None:
    env = dispatcher_env(migrated_database_url, kafka_bootstrap_servers, topic_prefix, mail_sink, SHUTDOWN_GRACE_S="1")
    first = start_dispatcher(env)

    async def some_delivered() -> bool:
        return len(mail_sink.message_paths()) >= 5

    await wait_until(some_delivered, timeout=60, what="the batch under way")
    stopped_at = time.monotonic()
    first.send_signal(signal.SIGTERM)

    assert first.wait(20) == 0
    assert time.monotonic() - stopped_at < 10
    after_stop = statuses(migrated_database_url)
    assert not after_stop.get("sending")  # nothing left inside the window
    assert after_stop.get("queued"), "the stop must land in the middle of the batch"

    second = start_dispatcher(env)

    async def all_sent() -> bool:
        return len(statuses(migrated_database_url).get("sent", [])) == MESSAGES

    await wait_until(all_sent, timeout=90, what="every message sent after the restart")
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    delivered = deliveries(mail_sink)
    assert sorted(delivered) == sorted(message_header(i) for i in queued)
    assert set(delivered.values()) == {1}
