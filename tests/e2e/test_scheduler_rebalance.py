"""Three scheduler processes share ``leads.accepted`` as one consumer group; one is killed with SIGKILL in
the middle of the stream. Its partitions move to the two survivors, which take over from its last
committed offsets: every lead is enrolled exactly once and its first step queued exactly once, on Tansu
and on Apache Kafka alike."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from proto.codec import encode_message
from proto.messages import LeadAccepted
from services.common.clock import utcnow
from services.common.config import DatabaseSettings
from services.common.sequences import apply_sequence_files
from services.scheduler.service import CONSUMER_GROUP
from tests.support.platform import free_port, topics_for, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = 3
PARTITIONS = 6
LEADS = 90

SEQUENCE = """\
apiVersion: healingwork.io/v1alpha1
kind: Sequence
metadata: {name: rebalance, namespace: default}
spec:
  trigger: {sources: [rebalance]}
  steps:
    - {name: hello, delay: 0s, subject: Hi, text: Hello}
    - {name: later, delay: 30d, subject: Later, text: Later}
"""


class Member:
    """One ``python -m services scheduler`` process, as a pod runs it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.health_port = free_port()
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services", "scheduler"],
            env={**env, "HEALTH_PORT": str(self.health_port)},
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        """``/readyz``: its consumer owns partitions."""
        assert self.process.poll() is None, f"scheduler exited with {self.process.returncode}: see {self.log}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@pytest.fixture
def start_members(tmp_path: Path) -> Iterator[list[Member]]:
    members: list[Member] = []
    yield members
    for member in members:
        if member.process.poll() is None:
            member.process.send_signal(signal.SIGTERM)
    for member in members:
        try:
            member.process.wait(30)
        except subprocess.TimeoutExpired:
            member.process.kill()
            member.process.wait(10)


def scheduler_env(database_url: str, bootstrap: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TOPIC_", "KAFKA_"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_PARTITIONS": str(PARTITIONS),
            "KAFKA_SESSION_TIMEOUT_S": "2",
            "SCHEDULER_POLL_INTERVAL_S": "0.2",
            # The email.dispatch commands stay in the outbox: this test counts them there.
            "RELAY_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
            **{name.upper(): value for name, value in topics_for(prefix).items()},
        }
    )
    return env


async def insert_leads(database_url: str, count: int) -> list[uuid.UUID]:
    leads = [uuid.uuid4() for _ in range(count)]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for lead in leads:
            await conn.execute(
                """INSERT INTO leads (id, email, email_normalized, first_name, source, consent_marketing)
                   VALUES (%s, %s, %s, 'Lead', 'rebalance', true)""",
                (lead, f"{lead}@example.com", f"{lead}@example.com"),
            )
    return leads


async def publish_accepted(bootstrap: str, topic: str, leads: list[uuid.UUID]) -> None:
    """What intake's relay publishes for each lead, keyed by lead id (so spread over every partition)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for lead in leads:
            message = LeadAccepted(id=lead, occurred_at=utcnow(), lead_id=lead, source="rebalance")
            await producer.send(topic, encode_message(message), key=str(lead).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def group_size(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        [description] = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    # DescribeGroups v0 answer: [(error_code, group_id, state, protocol_type, protocol, members)]
    groups = description.groups
    return len(groups[0][5]) if groups else 0


def enrolled_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM leads WHERE enrolled_at IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


async def test_a_member_killed_mid_stream_leaves_every_lead_enrolled_exactly_once(
    migrated_database_url: str,
    broker_bootstrap_servers: str,
    topic_prefix: str,
    tmp_path: Path,
    start_members: list[Member],
) -> None:
    sequence = tmp_path / "rebalance.yaml"
    sequence.write_text(SEQUENCE)
    await apply_sequence_files(DatabaseSettings(database_url=migrated_database_url), [sequence])
    leads = await insert_leads(migrated_database_url, LEADS)
    env = scheduler_env(migrated_database_url, broker_bootstrap_servers, topic_prefix)
    group = f"{topic_prefix}{CONSUMER_GROUP}"
    topic = f"{topic_prefix}leads.accepted"

    start_members.extend(Member(env, tmp_path / f"scheduler-{i}.log") for i in range(MEMBERS))

    async def all_members_own_partitions() -> bool:
        return all(member.ready() for member in start_members) and (
            await group_size(broker_bootstrap_servers, group) == MEMBERS
        )

    await wait_until(all_members_own_partitions, timeout=120, what=f"{MEMBERS} members sharing the partitions")

    first_half, second_half = leads[: LEADS // 2], leads[LEADS // 2 :]
    await publish_accepted(broker_bootstrap_servers, topic, first_half)

    async def some_enrolled() -> bool:
        return enrolled_count(migrated_database_url) >= LEADS // 6

    await wait_until(some_enrolled, timeout=60, what="the first leads enrolled")
    victim = start_members[0]
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)
    # Published while the dead member still holds its partitions (until its session times out).
    await publish_accepted(broker_bootstrap_servers, topic, second_half)

    async def all_enrolled() -> bool:
        return enrolled_count(migrated_database_url) == LEADS

    await wait_until(all_enrolled, timeout=120, what="every lead enrolled by the two survivors")
    assert await group_size(broker_bootstrap_servers, group) == MEMBERS - 1
    assert all(member.process.poll() is None for member in start_members[1:])

    with psycopg.connect(migrated_database_url) as conn:
        enrollments = conn.execute(
            """SELECT l.id, count(e.id) FROM leads l LEFT JOIN enrollments e ON e.lead_id = l.id GROUP BY l.id"""
        ).fetchall()
        first_steps = conn.execute(
            "SELECT enrollment_id, count(*) FROM messages WHERE step_position = 0 GROUP BY enrollment_id"
        ).fetchall()
        commands = conn.execute(
            "SELECT key, count(*) FROM outbox WHERE topic = %s GROUP BY key", (f"{topic_prefix}email.dispatch",)
        ).fetchall()
    assert sorted(lead for lead, _ in enrollments) == sorted(leads)
    assert {count for _, count in enrollments} == {1}, "every lead enrolled exactly once"
    assert len(first_steps) == LEADS
    assert {count for _, count in first_steps} == {1}, "every first step queued exactly once"
    assert len(commands) == LEADS
    assert {count for _, count in commands} == {1}, "every email.dispatch command written exactly once"
