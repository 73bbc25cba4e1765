"""Pytest fixtures providing real PostgreSQL, Kafka-protocol broker and SMTP servers.

Load with ``pytest_plugins = ["tests.support.services"]`` (or ``from tests.support.services import *``).

Resolution order for the shared servers:

* PostgreSQL (``postgres_url``): ``$DATABASE_URL`` → a ``postgres:16-alpine`` testcontainer if a Docker
  engine answers → :class:`~devstack.embedded.EmbeddedPostgres` in a session temp dir.
* Broker (``kafka_bootstrap_servers``): ``$KAFKA_BOOTSTRAP_SERVERS`` → a Kafka testcontainer if Docker
  answers → :class:`~devstack.embedded.EmbeddedBroker`.

``embedded_broker`` is always a private embedded broker, for tests that pause/kill/restart it.

``broker_bootstrap_servers`` is parametrized over the two brokers the suites run against: ``tansu``
(always the embedded Tansu broker, ``tansu_bootstrap_servers``, which the broker above also is when
nothing else is given) and ``kafka`` (Apache Kafka from ``.tools``,
:class:`~devstack.apache_kafka.ApacheKafkaBroker`, one per session, marked ``kafka``). Tests of the bus,
the consumers and the relay take it to pass on both. The ``kafka`` variant is never skipped: without
``make tools`` it fails, saying so.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from devstack.apache_kafka import ApacheKafkaBroker, KafkaNotInstalled
from devstack.embedded import EmbeddedBroker, EmbeddedPostgres
from devstack.mailsink import MailSink

__all__ = [
    "BROKERS",
    "apache_kafka_broker",
    "broker_bootstrap_servers",
    "database_url",
    "docker_available",
    "embedded_broker",
    "kafka_bootstrap_servers",
    "mail_sink",
    "postgres_url",
    "scratch_database",
    "tansu_bootstrap_servers",
    "unique_topic_prefix",
    "with_database",
]


@cache
def docker_available() -> bool:
    """Whether a Docker engine answers within 5 s (``docker info``, else docker-py ping); cached."""
    if shutil.which("docker"):
        try:
            result = subprocess.run(
                ["docker", "info"], capture_output=True, timeout=5, check=False, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired):
            result = None
        if result is not None and result.returncode == 0:
            return True
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def unique_topic_prefix() -> str:
    """A fresh topic/group-name prefix like ``"t1a2b3c4d."`` so tests can share one broker safely."""
    return f"t{uuid.uuid4().hex[:8]}."


def with_database(url: str, database: str) -> str:
    """``url`` with its database (path) replaced by ``database``; query and credentials are kept."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _plain_postgres_url(url: str) -> str:
    """Drop a SQLAlchemy-style driver suffix: ``postgresql+psycopg2://`` → ``postgresql://``."""
    return re.sub(r"^postgres(?:ql)?\+[A-Za-z0-9_]+://", "postgresql://", url)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL (psycopg 3 / libpq form) of a PostgreSQL server with superuser rights, for the whole session.

    Tests should not create objects here directly; use ``database_url`` for an isolated database.
    """
    env_url = os.environ.get("DATABASE_URL")
    if env_url:
        yield _plain_postgres_url(env_url)
        return
    if docker_available():
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # older testcontainers layout
            from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield _plain_postgres_url(container.get_connection_url())
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg", numbered=True) / "data")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def scratch_database(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database ``test_<uuid hex>`` on ``postgres_url``; dropped (FORCE) afterwards."""
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(postgres_url, name)
    finally:
        with psycopg.connect(postgres_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    """URL of a fresh, empty database on ``postgres_url`` (:func:`scratch_database`), for one test."""
    with scratch_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="session")
def kafka_bootstrap_servers(request: pytest.FixtureRequest) -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker shared by the session (use ``unique_topic_prefix()``)."""
    env_servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env_servers:
        yield env_servers
        return
    if docker_available():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # older testcontainers layout
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield str(container.get_bootstrap_server())
        return
    servers: str = request.getfixturevalue("tansu_bootstrap_servers")
    yield servers


@pytest.fixture(scope="session")
def tansu_bootstrap_servers() -> Iterator[str]:
    """``host:port`` of an embedded Tansu broker shared by the session, whatever the environment says."""
    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


# The brokers a test taking ``broker_bootstrap_servers`` runs against; `pytest -m kafka` selects the Apache Kafka ones.
BROKERS = ("tansu", pytest.param("kafka", marks=pytest.mark.kafka))


@pytest.fixture(scope="session")
def apache_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaBroker]:
    """One Apache Kafka broker + controller for the whole session (tests share it with unique topic names)."""
    data_dir = tmp_path_factory.mktemp("apache-kafka", numbered=True)
    broker = ApacheKafkaBroker(data_dir=data_dir)
    try:
        broker.start()
    except KafkaNotInstalled as error:
        pytest.fail(f"{error} (the kafka suite needs it; it is never skipped)", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(params=BROKERS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """``"tansu"`` or ``"kafka"``: which broker ``broker_bootstrap_servers`` is."""
    kind: str = request.param
    return kind


@pytest.fixture
def broker_bootstrap_servers(broker_kind: str, request: pytest.FixtureRequest) -> str:
    """``host:port`` of the session's Tansu broker (``[tansu]``) or Apache Kafka broker (``[kafka]``)."""
    if broker_kind == "kafka":
        broker: ApacheKafkaBroker = request.getfixturevalue("apache_kafka_broker")
        return broker.bootstrap_servers
    servers: str = request.getfixturevalue("tansu_bootstrap_servers")
    return servers


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """A private, always-embedded broker for the session, for tests that pause/kill/restart it.

    A test that leaves it stopped or paused gets it resumed/restarted only by the next test that needs
    it running; tests should call ``resume()``/``start()`` themselves (``start()`` is idempotent).
    """
    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mail_sink(tmp_path: Path) -> Iterator[MailSink]:
    """A running :class:`MailSink` storing into ``tmp_path / "mail"``, stopped after the test."""
    sink = MailSink(tmp_path / "mail")
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
