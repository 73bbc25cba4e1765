"""Integration tests for the embedded dev servers and the service fixtures (real processes, no mocks)."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack.embedded import EmbeddedBroker, EmbeddedPostgres, find_free_port
from devstack.mailsink import MailSink
from tests.support.services import unique_topic_prefix

pytestmark = pytest.mark.integration


# -- PostgreSQL ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("embedded-pg") / "data")
    with server:
        yield server


def test_postgres_starts_and_answers(private_postgres: EmbeddedPostgres) -> None:
    assert private_postgres.pid is not None
    assert private_postgres.url == f"postgresql://postgres@127.0.0.1:{private_postgres.port}/postgres"
    with psycopg.connect(private_postgres.url) as conn:
        row = conn.execute("SELECT current_user, current_setting('server_version_num')::int").fetchone()
    assert row is not None
    assert row[0] == "postgres"
    assert row[1] >= 160000


def test_postgres_kill_and_restart_keeps_committed_data(private_postgres: EmbeddedPostgres) -> None:
    url = private_postgres.create_database("durability")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO t VALUES (1, 'survives kill -9')")
    old_pid = private_postgres.pid
    assert old_pid is not None

    private_postgres.kill()
    assert not private_postgres.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)

    private_postgres.restart()
    assert private_postgres.pid not in (None, old_pid)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT note FROM t WHERE id = 1").fetchone() == ("survives kill -9",)


def test_postgres_stop_is_idempotent_and_restart_reuses_port(tmp_path: Path) -> None:
    port = find_free_port()
    server = EmbeddedPostgres(tmp_path / "data", port=port)
    server.start()
    try:
        server.stop()
        server.stop()
        assert server.pid is None
        server.start()
        assert server.port == port
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()


def test_database_url_fixture_gives_empty_database(database_url: str, postgres_url: str) -> None:
    assert database_url != postgres_url
    with psycopg.connect(database_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert name is not None
    assert name[0].startswith("test_")
    assert tables == (0,)


# -- Broker -------------------------------------------------------------------------------------------


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _produce_and_consume(bootstrap: str, topic: str, payload: bytes) -> bytes:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, payload, key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}.group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # Tansu answers JoinGroup only after ~session_timeout/2 (5 s with the default 10 s).
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=20)
    finally:
        await consumer.stop()
    value: bytes = record.value
    return value


async def test_broker_roundtrip_and_restart_loses_topics(embedded_broker: EmbeddedBroker) -> None:
    embedded_broker.start()  # idempotent; another test may have stopped it
    bootstrap = embedded_broker.bootstrap_servers
    topic = f"{unique_topic_prefix()}roundtrip"
    await _create_topic(bootstrap, topic)

    assert await _produce_and_consume(bootstrap, topic, b"hello tansu") == b"hello tansu"
    assert topic in await _topics(bootstrap)

    old_pid = embedded_broker.pid
    await asyncio.to_thread(embedded_broker.restart)
    assert embedded_broker.pid not in (None, old_pid)
    assert embedded_broker.bootstrap_servers == bootstrap
    assert topic not in await _topics(bootstrap)


async def test_shared_broker_fixture_roundtrip(kafka_bootstrap_servers: str) -> None:
    topic = f"{unique_topic_prefix()}shared"
    await _create_topic(kafka_bootstrap_servers, topic)
    assert await _produce_and_consume(kafka_bootstrap_servers, topic, b"shared") == b"shared"


def _process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _eventual_process_state(pid: int, wanted: set[str], timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    state = _process_state(pid)
    while state not in wanted and time.monotonic() < deadline:
        time.sleep(0.01)
        state = _process_state(pid)
    return state


def _process_alive(pid: int) -> bool:
    try:
        return _process_state(pid) != "Z"
    except FileNotFoundError:
        return False


def test_broker_pause_resume_and_kill(tmp_path: Path) -> None:
    log = tmp_path / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        pid = broker.pid
        assert pid is not None
        broker.pause()
        # SIGSTOP reaches a process running on another CPU asynchronously: poll, with a deadline.
        assert _eventual_process_state(pid, {"T"}) == "T"  # stopped
        broker.resume()
        assert _eventual_process_state(pid, {"S", "R"}) in {"S", "R"}
        broker.kill()
        assert not broker.running
        assert not _process_alive(pid)
        broker.start()
        new_pid = broker.pid
        assert new_pid is not None
        assert new_pid != pid
    assert not _process_alive(new_pid)
    assert "ready in" in log.read_text()


# -- Mail sink ----------------------------------------------------------------------------------------


def _message(subject: str = "Welcome", to: str = "lead@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Healing Work <hello@healingwork.test>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hi there,\nthanks for reaching out.\n")
    return msg


def test_mail_sink_stores_message(mail_sink: MailSink) -> None:
    with smtplib.SMTP(mail_sink.host, mail_sink.port, timeout=10) as smtp:
        smtp.send_message(_message(subject="Grüße 👋"), from_addr="bounce@healingwork.test")

    files = list(mail_sink.mail_dir.iterdir())
    assert len(files) == 1
    assert files[0].suffix == ".eml"
    [parsed] = mail_sink.messages()
    assert parsed["From"] == "Healing Work <hello@healingwork.test>"
    assert parsed["To"] == "lead@example.com"
    assert parsed["Subject"] == "Grüße 👋"
    assert "Return-Path" not in parsed
    assert "thanks for reaching out" in parsed.get_content()
    assert mail_sink.envelopes == [("bounce@healingwork.test", ["lead@example.com"])]


def test_mail_sink_accepts_smtputf8(mail_sink: MailSink) -> None:
    msg = _message(to="jürgen@exämple.de")
    with smtplib.SMTP(mail_sink.host, mail_sink.port, timeout=10) as smtp:
        smtp.send_message(msg, mail_options=["SMTPUTF8"])
    [parsed] = mail_sink.wait_for_messages(1)
    assert parsed["To"] == "jürgen@exämple.de"
    assert mail_sink.envelopes[0][1] == ["jürgen@exämple.de"]


def test_mail_sink_fail_with_rejects_data(mail_sink: MailSink) -> None:
    mail_sink.fail_with = (451, "4.3.0 try later")
    with (
        smtplib.SMTP(mail_sink.host, mail_sink.port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPDataError) as excinfo,
    ):
        smtp.send_message(_message())
    assert excinfo.value.smtp_code == 451
    assert b"try later" in excinfo.value.smtp_error
    assert mail_sink.messages() == []
    assert mail_sink.envelopes == []

    mail_sink.fail_with = None
    with smtplib.SMTP(mail_sink.host, mail_sink.port, timeout=10) as smtp:
        smtp.send_message(_message())
    assert len(mail_sink.messages()) == 1


def test_mail_sink_rejects_listed_recipient(mail_sink: MailSink) -> None:
    mail_sink.reject_recipients = {"Bounce@Example.com": (550, "5.1.1 no such user")}
    with smtplib.SMTP(mail_sink.host, mail_sink.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as excinfo:
            smtp.send_message(_message(to="bounce@example.COM"))
        assert excinfo.value.recipients == {"bounce@example.COM": (550, b"5.1.1 no such user")}

        refused = smtp.send_message(_message(to="a@example.com, bounce@example.com"))
    assert refused == {"bounce@example.com": (550, b"5.1.1 no such user")}
    [stored] = mail_sink.messages()
    assert mail_sink.envelopes == [("hello@healingwork.test", ["a@example.com"])]
    assert stored["To"] == "a@example.com, bounce@example.com"
