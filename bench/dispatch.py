"""Dispatch throughput, end to end, against the raw SMTP ceiling measured in the same run.

``uv run python -m bench.dispatch [--messages N] [--dispatchers 2] [--concurrency 8]``

* **raw ceiling**: aiosmtplib sending one pre-built message (bytes) over ``dispatchers × concurrency``
  persistent connections to the sink, as fast as it can.
* **end to end**: N ``email.dispatch`` commands produced to Kafka while ``dispatchers`` real
  ``healingwork dispatcher`` processes consume them: each message is read from PostgreSQL, claimed
  (``sending`` committed), rendered (sandboxed Jinja2, tracking links, List-Unsubscribe), sent to the
  same sink and recorded (``sent``, an event and its outbox row). The clock runs from the first
  command produced to the moment PostgreSQL holds N ``sent`` messages.

Everything is local: embedded PostgreSQL, the embedded Tansu broker, and ``bench.smtp_sink`` (a
minimal sink in its own process). The last line of output is one JSON object. ``BENCH_PROFILE=1``
runs each dispatcher under cProfile (``/tmp/prof-<port>.out``). ``--smoke`` (bench/smoke.py): the sizes
of ``SMOKE`` for the options not given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import psycopg
from aiokafka import AIOKafkaProducer

from bench.postfix_sink import ensure_smtp_sink, start_smtp_sink
from bench.smoke import parse_arguments
from devstack.embedded import EmbeddedBroker, EmbeddedPostgres, find_free_port
from proto.codec import encode_message
from proto.messages import EmailDispatch
from services.common.clock import utcnow
from services.common.config import DatabaseSettings
from services.common.db import connect
from services.common.migrate import apply_migrations
from services.common.sequences import apply_sequence, parse_sequence_document

ROOT = Path(__file__).resolve().parents[1]
SECRET = uuid.uuid4().hex + uuid.uuid4().hex
SEQUENCE = {
    "apiVersion": "healingwork.io/v1alpha1",
    "kind": "Sequence",
    "metadata": {"name": "bench"},
    "spec": {
        "trigger": {"sources": ["bench"]},
        "steps": [
            {
                "name": "hello",
                "subject": "Welcome, {{ lead.first_name or 'friend' }}",
                "html": (
                    "<html><body><p>Hi {{ lead.first_name }},</p><p>Thanks for signing up. Here is "
                    '<a href="https://example.com/start?utm_source=bench">where to start</a>.</p>'
                    "<p>The team</p></body></html>"
                ),
            }
        ],
    },
}
# --smoke (bench/smoke.py)
SMOKE = {"messages": 200, "concurrency": 4, "batch": 50, "partitions": 2, "ceiling_seconds": 0.5, "timeout": 120.0}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def raw_ceiling(port: int, connections: int, seconds: float) -> float:
    """Messages per second aiosmtplib sends of pre-built bytes over ``connections`` connections."""
    message = EmailMessage()
    message["From"] = "Bench <bench@example.com>"
    message["To"] = "lead@example.com"
    message["Subject"] = "Welcome, Lead"
    message.set_content("Hi Lead,\n\nThanks for signing up.\n" * 3)
    message.add_alternative("<p>Hi Lead,</p><p>Thanks for signing up.</p>" * 3, subtype="html")
    data = message.as_bytes()
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) for _ in range(connections)]
    await asyncio.gather(*(client.connect() for client in clients))
    sent = 0
    deadline = time.perf_counter() + seconds

    async def pump(client: aiosmtplib.SMTP) -> None:
        nonlocal sent
        while time.perf_counter() < deadline:
            await client.sendmail("bench@example.com", ["lead@example.com"], data)
            sent += 1

    started = time.perf_counter()
    await asyncio.gather(*(pump(client) for client in clients))
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    return sent / elapsed


async def seed(database_url: str, count: int) -> list[EmailDispatch]:
    """``count`` leads, each with a queued message of the bench Sequence; returns their commands."""
    conn = await connect(DatabaseSettings(database_url=database_url))
    async with conn:
        async with conn.transaction():
            applied = await apply_sequence(conn, parse_sequence_document(SEQUENCE, "bench"))
            cursor = await conn.execute("SELECT id FROM sequences WHERE name = %s", (applied.name,))
            row = await cursor.fetchone()
            assert row is not None
            sequence_id = row["id"]
            await conn.execute(
                """INSERT INTO leads (id, email, email_normalized, first_name, source, consent_marketing)
                   SELECT gen_random_uuid(), 'lead' || i || '@example.com', 'lead' || i || '@example.com',
                          'Lead', 'bench', true
                   FROM generate_series(1, %s) AS i""",
                (count,),
            )
            await conn.execute(
                """INSERT INTO enrollments (id, lead_id, sequence_id, revision, next_step, next_run_at, status)
                   SELECT gen_random_uuid(), id, %s, 1, 1, NULL, 'completed' FROM leads""",
                (sequence_id,),
            )
            await conn.execute(
                """INSERT INTO messages (id, enrollment_id, lead_id, sequence_id, revision, step_position, status)
                   SELECT gen_random_uuid(), id, lead_id, sequence_id, 1, 0, 'queued' FROM enrollments"""
            )
        cursor = await conn.execute("SELECT id, enrollment_id, lead_id FROM messages")
        rows = await cursor.fetchall()
    now = utcnow()
    return [
        EmailDispatch(
            id=r["id"],  # type: ignore[arg-type]
            occurred_at=now,
            message_id=r["id"],  # type: ignore[arg-type]
            enrollment_id=r["enrollment_id"],  # type: ignore[arg-type]
            lead_id=r["lead_id"],  # type: ignore[arg-type]
        )
        for r in rows
    ]


def dispatcher_env(
    database_url: str, bootstrap: str, sink_port: int, health_port: int, args: argparse.Namespace
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        {
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_PARTITIONS": str(args.partitions),
            "KAFKA_SESSION_TIMEOUT_S": "6",
            "HEALTH_PORT": str(health_port),
            "HMAC_SECRET": SECRET,
            "PUBLIC_BASE_URL": "https://go.example.com",
            "FROM_EMAIL": "hello@example.com",
            "FROM_NAME": "Bench",
            "SMTP_URL": f"smtp://127.0.0.1:{sink_port}?starttls=never",
            "DISPATCH_CONCURRENCY": str(args.concurrency),
            "DISPATCH_BATCH_SIZE": str(args.batch),
            "DB_POOL_MAX_SIZE": str(args.concurrency + 4),
            "LOG_LEVEL": "WARNING",
        }
    )
    return env


def dispatcher_command(port: int) -> list[str]:
    if os.environ.get("BENCH_PROFILE"):
        profile = Path(tempfile.gettempdir()) / f"prof-{port}.out"
        return [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "services", "dispatcher"]
    return [sys.executable, "-m", "services", "dispatcher"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ready(health_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def sent_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM messages WHERE status = 'sent'").fetchone()
    return int(row[0]) if row else 0


def has_unfinished(database_url: str) -> bool:
    """Whether a message is still queued, sending or retrying: the clock's stop condition, polled every
    100 ms. It reads the first entry of each partial index (counting the sent messages scanned the
    whole table each time, CPU taken from the system measured)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """SELECT EXISTS (SELECT FROM messages WHERE status = 'queued')
                   OR EXISTS (SELECT FROM messages WHERE status = 'sending')
                   OR EXISTS (SELECT FROM messages WHERE status = 'retrying')"""
        ).fetchone()
    return bool(row and row[0])


async def end_to_end(
    database_url: str, bootstrap: str, sink_port: int, args: argparse.Namespace
) -> tuple[float, float]:
    """Emails per second end to end, and the dispatchers' CPU time per email (µs; start-up excluded):
    the second figure depends far less on what else the machine is doing than the first."""
    commands = await seed(database_url, args.messages)
    log(f"seeded {len(commands)} queued messages")
    ports = [find_free_port() for _ in range(args.dispatchers)]
    processes = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock runs
            dispatcher_command(port),
            env=dispatcher_env(database_url, bootstrap, sink_port, port, args),
            cwd=ROOT,
        )
        for port in ports
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(ready(port) for port in ports):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError("dispatchers did not become ready")
            await asyncio.sleep(0.2)
        log(f"{args.dispatchers} dispatchers ready; producing {len(commands)} commands")
        cpu_at_start = sum(cpu_seconds(p.pid) for p in processes)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, enable_idempotence=False, acks=1)
        await producer.start()
        started = time.perf_counter()
        try:
            for command in commands:
                await producer.send("email.dispatch", encode_message(command), key=str(command.enrollment_id).encode())
            await producer.flush()
        finally:
            await producer.stop()
        while has_unfinished(database_url):
            if time.perf_counter() - started > args.timeout:
                raise RuntimeError(f"only {sent_count(database_url)} of {len(commands)} sent after {args.timeout} s")
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        cpu = sum(cpu_seconds(p.pid) for p in processes) - cpu_at_start
        if (done := sent_count(database_url)) != len(commands):
            raise RuntimeError(f"{done} of {len(commands)} messages sent; the others did not end `sent`")
    finally:
        for process in processes:
            process.send_signal(2)
        for process in processes:
            process.wait(30)
    return len(commands) / elapsed, cpu / len(commands) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--dispatchers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16, help="SMTP connections per dispatcher")
    parser.add_argument("--batch", type=int, default=200, help="DISPATCH_BATCH_SIZE")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--ceiling-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--python-sink", action="store_true", help="use bench.smtp_sink even when Postfix's smtp-sink is available"
    )
    args = parse_arguments(parser, SMOKE)

    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "pg")
        broker = EmbeddedBroker()
        sink_port = find_free_port()
        binary = None if args.python_sink else ensure_smtp_sink()
        sink_name = "postfix smtp-sink" if binary else "bench.smtp_sink (python)"
        log(f"SMTP sink: {sink_name}")
        sink = (
            start_smtp_sink(binary, sink_port)
            if binary
            else subprocess.Popen([sys.executable, "-m", "bench.smtp_sink", str(sink_port)], cwd=ROOT)  # noqa: ASYNC220
        )
        postgres.start()
        broker.start()
        try:
            database_url = postgres.url
            apply_migrations(database_url)
            await asyncio.sleep(0.5)  # the sink process binds its port
            connections = args.dispatchers * args.concurrency
            # The ceiling is measured right before and right after the end-to-end run and averaged, so
            # a change in machine load during the run (this machine is shared) skews the ratio less.
            before = await raw_ceiling(sink_port, connections, args.ceiling_seconds)
            log(f"raw ceiling before: {before:.0f} messages/s over {connections} connections")
            rate, cpu_us = await end_to_end(database_url, broker.bootstrap_servers, sink_port, args)
            log(f"end to end: {rate:.0f} emails/s with {args.dispatchers} dispatchers")
            after = await raw_ceiling(sink_port, connections, args.ceiling_seconds)
            log(f"raw ceiling after: {after:.0f} messages/s")
            ceiling = (before + after) / 2
        finally:
            sink.terminate()
            sink.wait(10)
            broker.stop()
            postgres.stop()
    result = {
        "emails_per_s": round(rate, 1),
        "raw_ceiling_per_s": round(ceiling, 1),
        "raw_ceiling_before_after": [round(before, 1), round(after, 1)],
        "ratio": round(rate / ceiling, 3),
        "dispatcher_cpu_us_per_email": round(cpu_us),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "messages": args.messages,
        "dispatchers": args.dispatchers,
        "connections_per_dispatcher": args.concurrency,
        "cpus": os.cpu_count(),
        "sink": sink_name,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
