"""A service told to stop must stop: scheduler and dispatcher processes whose PostgreSQL and broker
were killed (as when `healingwork dev` dies with everything it started) or whose broker hangs exit
within the grace period after SIGTERM, whatever their shutdown steps would wait for."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from pathlib import Path

import psycopg
import pytest

from devstack.embedded import EmbeddedBroker, EmbeddedPostgres
from devstack.mailsink import MailSink
from services.common.config import DatabaseSettings
from services.common.db import open_pool
from services.common.migrate import apply_migrations
from services.common.shutdown import WATCHDOG_MARGIN_S
from tests.support.jobs import queued_message
from tests.support.platform import apply_examples, fetch_all, free_port, smtp_url_of, wait_until
from tests.support.processes import service_env, service_processes, terminate_and_time, wait_for_status

pytestmark = pytest.mark.e2e

GRACE_S = 6


@pytest.mark.parametrize(
    "fault",
    [
        "postgres killed, broker killed",  # `healingwork dev` killed with everything it started
        # The relays hold records the broker never acknowledged: a producer's close flushes them first.
        "broker killed, outbox rows pending",
        # A hung broker: connections open, nothing answered, every request waits for its timeout.
        "broker frozen, outbox rows pending",
    ],
)
async def test_services_whose_dependencies_are_gone_exit_within_the_grace_period_after_sigterm(
    tmp_path: Path, topic_prefix: str, mail_sink: MailSink, fault: str
) -> None:
    # Not under pytest's temp root: a pytest session starting meanwhile makes that 0700 again, and the
    # server runs as its own unprivileged user.
    data_dir = Path(tempfile.mkdtemp(prefix="hw-stop-"))
    postgres = EmbeddedPostgres(data_dir / "pg")
    broker = EmbeddedBroker()
    await asyncio.to_thread(postgres.start)
    await asyncio.to_thread(broker.start)
    try:
        database_url = await asyncio.to_thread(postgres.create_database, "stop")
        await asyncio.to_thread(apply_migrations, database_url)
        env = service_env(
            database_url,
            broker.bootstrap_servers,
            topic_prefix,
            SMTP_URL=smtp_url_of(mail_sink),
            SHUTDOWN_GRACE_S=str(GRACE_S),
        )
        with service_processes(tmp_path) as processes:
            ports = {name: free_port() for name in ("scheduler", "dispatcher")}
            services = {name: processes.start(name, {**env, "HEALTH_PORT": str(port)}) for name, port in ports.items()}
            for port in ports.values():  # ready: consumers in their groups, relays running
                await asyncio.to_thread(wait_for_status, f"http://127.0.0.1:{port}/readyz", 200, 90)

            if "postgres killed" in fault:
                await asyncio.to_thread(postgres.kill)
            if "broker killed" in fault:
                await asyncio.to_thread(broker.kill)
            if "broker frozen" in fault:
                broker.pause()
            if "outbox rows pending" in fault:
                await _queue_events(database_url, f"{topic_prefix}email.events", count=50)
                await asyncio.sleep(2.0)  # the relays claim them and hand them to their producers
            await asyncio.sleep(1.0)  # the services notice: connections reset, clients reconnecting

            durations = await asyncio.gather(
                *(asyncio.to_thread(terminate_and_time, process, 120) for process in services.values())
            )
            for (name, process), seconds in zip(services.items(), durations, strict=True):
                log = processes.log_of(process)
                assert seconds < GRACE_S + WATCHDOG_MARGIN_S + 1, f"{name} took {seconds:.1f}s:\n{log[-3000:]}"
                assert process.returncode == 0, f"{name} exited {process.returncode}:\n{log[-3000:]}"
    finally:
        broker.resume()
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(postgres.stop)
        shutil.rmtree(data_dir, ignore_errors=True)


async def _queue_events(database_url: str, topic: str, count: int) -> None:
    """``count`` outbox rows for the relays to publish (a topic nobody consumes: only publishing matters)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO outbox (topic, key, payload) SELECT %s, 'k' || n, convert_to('{}', 'UTF8')"
            " FROM generate_series(1, %s) AS n",
            (topic, count),
        )


async def test_a_dispatcher_with_sends_hanging_and_postgres_killed_exits_within_the_grace_period_after_sigterm(
    tmp_path: Path, topic_prefix: str, kafka_bootstrap_servers: str
) -> None:
    """The sends in flight wait for an SMTP server that accepted the connection and never answers, and
    their outcomes for a PostgreSQL that is gone: the dispatcher abandons them at the deadline (the
    messages stay in ``sending``, the window the reconcile job reports) instead of waiting it out."""
    data_dir = Path(tempfile.mkdtemp(prefix="hw-stop-"))
    postgres = EmbeddedPostgres(data_dir / "pg")
    await asyncio.to_thread(postgres.start)
    try:
        with socket.socket() as silent_smtp:
            silent_smtp.bind(("127.0.0.1", 0))
            silent_smtp.listen(64)  # connections complete in the backlog; no greeting ever comes
            database_url = await asyncio.to_thread(postgres.create_database, "stop")
            await asyncio.to_thread(apply_migrations, database_url)
            await apply_examples(database_url)
            pool = await open_pool(DatabaseSettings(database_url=database_url))
            try:
                for _ in range(4):
                    await queued_message(pool)
            finally:
                await pool.close()
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute("UPDATE outbox SET topic = %s", (f"{topic_prefix}email.dispatch",))

            env = service_env(
                database_url,
                kafka_bootstrap_servers,
                topic_prefix,
                SMTP_URL=f"smtp://127.0.0.1:{silent_smtp.getsockname()[1]}?starttls=never",
                SHUTDOWN_GRACE_S=str(GRACE_S),
                HEALTH_PORT="0",
            )
            with service_processes(tmp_path) as processes:
                dispatcher = processes.start("dispatcher", env)

                async def sending() -> bool:
                    rows = await fetch_all(database_url, "SELECT count(*) AS n FROM messages WHERE status = 'sending'")
                    return rows == [{"n": 4}]

                await wait_until(sending, timeout=90, what="every message handed to the silent SMTP server")
                await asyncio.to_thread(postgres.kill)
                seconds = await asyncio.to_thread(terminate_and_time, dispatcher, 300)
                log = processes.log_of(dispatcher)
                assert seconds < GRACE_S + WATCHDOG_MARGIN_S + 1, f"took {seconds:.1f}s:\n{log[-3000:]}"
                assert dispatcher.returncode == 0, f"exited {dispatcher.returncode}:\n{log[-3000:]}"
    finally:
        await asyncio.to_thread(postgres.stop)
        shutil.rmtree(data_dir, ignore_errors=True)
