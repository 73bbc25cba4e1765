"""Fault injection at scale: the platform as separate OS processes, leads through a three-step Sequence,
random faults, then an audit of what the SMTP sink received against what PostgreSQL says.

    uv run python -m bench.chaos                      # 3,000 leads, ~2 minutes of faults
    uv run python -m bench.chaos --leads 300 --duration 20 --seed 7 --scripted

Processes: two replicas each of intake (HTTP + outbox relay), scheduler, dispatcher and webhooks, started with
``python -m services <name>`` exactly as in a container, and the batch jobs (``healingwork job ...``) on a
short schedule, all against an embedded PostgreSQL, a broker (``--broker``: the embedded Tansu broker,
memory storage, by default; ``kafka``: Apache Kafka from ``.tools``, :mod:`devstack.apache_kafka`) and an
SMTP sink (:class:`~devstack.mailsink.MailSink` in a process of its own, :mod:`bench.chaos_sink`, offering
PIPELINING as relays do).

Phases: a calm phase at ``--calm-rate`` leads/s (the first-email latency baseline, no faults; the jobs
run at a CronJob's cadence, once a minute), then the remaining leads spread over ``--duration`` seconds
while faults are injected one after another (and retry-failed runs every ``--job-interval`` seconds):

* ``kill9:<service>#<replica>``: SIGKILL of one service process, started again at once (a pod restart);
* ``broker-pause``: SIGSTOP of the broker for 1-30 s (``--max-pause``), then SIGCONT;
* ``broker-restart``: the broker restarted; Tansu's memory storage loses every topic, message and offset
  and the reconcile job (retry-failed) must heal it; Apache Kafka keeps its log (a clean restart);
* ``postgres-restart``: once per run, PostgreSQL stopped (fast shutdown) and started on the same port;
* ``smtp-4xx``: the sink answers 451 to every DATA for 1-8 s;
* ``webhook-5xx``: the webhook receiver (:mod:`bench.chaos_webhooks`, registered for ``lead.accepted``
  and ``email.sent``) answers 503 for 1-8 s.

Throughout, a few chosen addresses (``--rejected``) are answered 550 at RCPT: those messages must end
``dead`` and on the dead-letter topic, and nothing else may.

The audit, after the pipeline drained (or the drain deadline passed):

* ``lost``: steps of an accepted lead (to a deliverable address) that the sink never received, plus leads
  the client was told were accepted but PostgreSQL does not have;
* ``duplicates``: extra copies the sink received of one message (same message id); those of a message
  that was in ``sending`` when a dispatcher was killed or PostgreSQL restarted (the recorded SMTP window)
  are attributed to it, the rest are ``duplicates_outside_window``;
* ``stuck``: work not finished at the end: leads not enrolled, active enrollments, messages not in a final
  state, unpublished outbox rows;
* ``webhooks_lost``: accepted leads without a ``lead.accepted`` and sent messages without an ``email.sent``
  at the webhook receiver; ``webhooks_duplicates_with_another_id``: an event received under two
  ``webhook-id`` values (copies under one id are the at-least-once kind, allowed); bad signatures;
* ``dlq_mismatch``: messages dead-lettered (the outbox rows of the dead-letter topic, published) that were
  not permanently rejected, plus permanently rejected ones that were not dead-lettered.

The last line printed is one JSON object (the figures in docs/reliability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.parser
import email.policy
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from bench.chaos_webhooks import WebhookSink, audit_webhooks, pending_webhooks
from bench.smtp_sink import read_stored
from devstack.apache_kafka import ApacheKafkaBroker
from devstack.embedded import EmbeddedBroker, EmbeddedPostgres, find_free_port
from devstack.jobs import DevJobs
from services.common.config import DatabaseSettings
from services.common.migrate import apply_migrations
from services.common.sequences import apply_sequence_files

SOURCE = "chaos"
SEQUENCE_YAML = """\
apiVersion: healingwork.io/v1alpha1
kind: Sequence
metadata: {name: chaos, namespace: default}
spec:
  trigger: {sources: [chaos]}
  steps:
    - {name: one, delay: 0s, subject: "One for {{ lead.first_name or 'you' }}", text: "Step one."}
    - {name: two, delay: %(delay2)s, subject: "Two", text: "Step two."}
    - {name: three, delay: %(delay3)s, subject: "Three", text: "Step three."}
"""
STEPS = 3
SERVICES = ("intake", "scheduler", "dispatcher", "webhooks")
REPLICAS = 2
IDEMPOTENCY_HEADER = "X-Idempotency-Key"
IN_FLIGHT = 64
JOBS = ("retry-failed", "aggregate-stats", "purge")


def say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _preexec() -> None:
    # Die with the harness even if it is killed with SIGKILL (Linux only).
    with contextlib.suppress(OSError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


@dataclass
class ServiceProcess:
    """One replica of one service: started again (same environment, same ports) after each kill."""

    name: str
    replica: int
    env: dict[str, str]
    log_path: Path
    ready_url: str
    # The intake's API (its health port, of ready_url, serves no API); None for the workers.
    api_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def label(self) -> str:
        return f"{self.name}#{self.replica}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services", self.name],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_preexec,
            )
        self.starts += 1

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                self.kill9()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.ready_url, timeout=1) as response:  # noqa: S310 - our own URL
                return bool(response.status == 200)
        except OSError:
            return False


@dataclass
class Run:
    """What happened during the run, for the audit."""

    accepted: dict[str, tuple[uuid.UUID, float, float]] = field(default_factory=dict)  # email -> (id, t0, t_ok)
    refused: Counter[int] = field(default_factory=Counter)
    attempts: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    window_message_ids: set[uuid.UUID] = field(default_factory=set)
    last_fault_end: float = 0.0
    rejected_emails: set[str] = field(default_factory=set)
    started_at: float = field(default_factory=time.monotonic)


class SinkProcess:
    """The SMTP sink (bench/chaos_sink.py) in its own process: the same fault hooks, over its stdin."""

    def __init__(self, mail_file: Path, rejected_file: Path) -> None:
        self.mail_file = mail_file
        self.host = "127.0.0.1"
        self.port = find_free_port()
        self._rejected_file = rejected_file
        self._process: subprocess.Popen[str] | None = None

    def start(self, rejected: set[str]) -> None:
        self._rejected_file.write_text(json.dumps(sorted(rejected)))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.chaos_sink", str(self.mail_file), str(self.port), str(self._rejected_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_preexec,
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            raise RuntimeError("the SMTP sink did not start")

    def _command(self, line: str) -> None:
        assert self._process is not None
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()
        self._process.stdout.readline()

    def fail_with(self, code: int, text: str) -> None:
        self._command(f"fail {code} {text}")

    def accept(self) -> None:
        self._command("ok")

    def messages(self) -> list[tuple[datetime, bytes]]:
        """Every message received so far, in receive order: (receive time, bytes)."""
        return read_stored(self.mail_file)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()


class Platform:
    """PostgreSQL, broker, sink and the service processes, with the fault handles."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.postgres = EmbeddedPostgres(work / "postgres")
        self.broker: EmbeddedBroker | ApacheKafkaBroker = (
            ApacheKafkaBroker(log_path=self.logs / "broker.log", data_dir=work / "kafka")
            if args.broker == "kafka"
            else EmbeddedBroker(log_path=self.logs / "broker.log")
        )
        self.sink = SinkProcess(work / "mail.log", work / "rejected.json")
        self.webhook_sink = WebhookSink()
        self.rejected: set[str] = set()
        self.services: list[ServiceProcess] = []
        self.jobs: DevJobs | None = None
        self.database_url = ""

    def start(self) -> None:
        self.postgres.start()
        self.database_url = self.postgres.create_database("healingwork", exist_ok=True)
        apply_migrations(self.database_url)
        sequence = self.work / "chaos-sequence.yaml"
        delay = f"{round(self.args.step_delay)}s"
        sequence.write_text(SEQUENCE_YAML % {"delay2": delay, "delay3": delay})
        asyncio.run(apply_sequence_files(DatabaseSettings(database_url=self.database_url), [sequence]))
        self.broker.start()
        self.sink.start(self.rejected)
        self.webhook_sink.start()
        shared = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
            "SMTP_URL": f"smtp://{self.sink.host}:{self.sink.port}?starttls=never",
            "HMAC_SECRET": secrets.token_hex(32),
            # Required since keyed address hashes (issue 15); one per run, like HMAC_SECRET.
            "SUPPRESSION_HASH_KEY": secrets.token_hex(32),
            "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
            "FROM_EMAIL": "chaos@example.com",
            "FROM_NAME": "healingwork chaos",
            "LOG_LEVEL": "INFO",
            "KAFKA_PARTITIONS": "4",
            # As `healingwork dev`: the embedded broker forms a group in about half the session timeout.
            "KAFKA_SESSION_TIMEOUT_S": "3",
            "SCHEDULER_POLL_INTERVAL_S": "0.5",
            # Retries within the run (production waits minutes): a 4xx period must not outlast them.
            "RETRY_BASE_DELAY_S": "1",
            "RETRY_MAX_DELAY_S": "4",
            "MAX_ATTEMPTS": "30",
            "SMTP_THROTTLE_PAUSE_S": "1",
            "SMTP_IDEMPOTENCY_HEADER": IDEMPOTENCY_HEADER,
            "RATE_LIMIT_PER_MINUTE": "1000000",
            # The reconcile job's thresholds, seconds instead of the production 15 minutes.
            "UNENROLLED_LEAD_AFTER_S": str(self.args.reconcile_after),
            "STUCK_QUEUED_AFTER_S": str(self.args.reconcile_after),
            # Longer: a live dispatcher may hold a message in `sending` while PostgreSQL restarts.
            "STUCK_SENDING_AFTER_S": str(self.args.resend_sending_after),
            "RESEND_STUCK_SENDING": "true",
            # Outgoing webhooks to the harness's receiver on loopback, retried within the run (production:
            # 27.5 hours), a killed deliverer's claim due again 25 s later, the outbox re-read every 5 s.
            "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
            "WEBHOOK_RETRY_SCHEDULE_S": ",".join(["1", "1", "2", "2"] + ["3"] * 30),
            "WEBHOOK_TIMEOUT_S": "5",
            "WEBHOOK_RECONCILE_INTERVAL_S": "5",
        }
        for name in SERVICES:
            for replica in range(REPLICAS):
                port = find_free_port()
                env = {**shared, "HEALTH_PORT": str(port)}
                api_url = None
                if name == "intake":
                    api_port = find_free_port()
                    env.update({"HOST": "127.0.0.1", "PORT": str(api_port), "AUTH_MODE": "disabled"})
                    api_url = f"http://127.0.0.1:{api_port}"
                self.services.append(
                    ServiceProcess(
                        name,
                        replica,
                        env,
                        self.logs / f"{name}-{replica}.log",
                        f"http://127.0.0.1:{port}/readyz",
                        api_url,
                    )
                )
        for service in self.services:
            service.start()
        self.wait_ready(90)
        self.webhook_sink.register(self.intake_urls()[0])
        # During the calm phase the jobs run at a CronJob's cadence (once a minute at most; the chart's
        # defaults are rarer still), so the latency baseline is that of a deployment; from the fault
        # phase on, retry-failed runs every --job-interval seconds, so the healing is seen in minutes.
        self.jobs = DevJobs(shared, self.logs / "jobs.log", schedule=dict.fromkeys(JOBS, 60.0), first_after_s=1.0)

    def accelerate_jobs(self) -> None:
        assert self.jobs is not None
        self.jobs.reschedule({"retry-failed": self.args.job_interval, "aggregate-stats": 20.0, "purge": 60.0})

    def intake_urls(self) -> list[str]:
        return [s.api_url for s in self.services if s.api_url is not None]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.services)
        while pending:
            for service in list(pending):
                if service.process is not None and service.process.poll() is not None:
                    raise RuntimeError(
                        f"{service.label} exited with {service.process.returncode}: see {service.log_path}"
                    )
                if service.ready():
                    pending.remove(service)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f}s: {[s.label for s in pending]}")
            time.sleep(0.2)

    def supervise(self) -> None:
        """Start again any service that died on its own (a crash loop would show in the restart count)."""
        for service in self.services:
            if service.process is not None and service.process.poll() is not None:
                say(f"{service.label} exited with {service.process.returncode}; starting it again")
                service.start()
        if self.jobs is not None:
            self.jobs.tick()

    def stop(self) -> None:
        if self.jobs is not None:
            self.jobs.stop()
        for service in self.services:
            service.stop()
        self.broker.resume()
        self.sink.stop()
        self.webhook_sink.stop()
        self.broker.stop()
        self.postgres.stop()


def sending_message_ids(database_url: str) -> set[uuid.UUID]:
    """The messages now inside the SMTP window (``sending``); retried while PostgreSQL is coming back."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(database_url, connect_timeout=5) as conn:
                return {row[0] for row in conn.execute("SELECT id FROM messages WHERE status = 'sending'")}
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def inject_faults(platform: Platform, run: Run, rng: random.Random, until: float, scripted: bool) -> None:
    """Faults one after another until ``until`` (monotonic); each kind at least once, PostgreSQL once."""
    args = platform.args
    kinds = ["kill9", "broker-pause", "broker-restart", "postgres-restart", "smtp-4xx", "webhook-5xx"]
    plan = kinds[:] if scripted else []
    if scripted:
        # One kill of each service, then one of every other kind, in a shuffled order.
        plan = ["kill9:intake", "kill9:scheduler", "kill9:dispatcher", "kill9:webhooks", *kinds[1:]]
        rng.shuffle(plan)
    postgres_done = False
    while time.monotonic() < until or plan or len(run.faults) < args.min_faults:
        if plan:
            kind = plan.pop(0)
        else:
            kind = rng.choices(
                ["kill9", "broker-pause", "broker-restart", "smtp-4xx", "webhook-5xx", "postgres-restart"],
                weights=[12, 1, 1, 1, 1, 0 if postgres_done else 1],
            )[0]
        if kind.startswith("kill9"):
            _, _, name = kind.partition(":")
            candidates = [s for s in platform.services if not name or s.name == name]
            service = rng.choice(candidates)
            if service.name == "dispatcher":
                before = await asyncio.to_thread(sending_message_ids, platform.database_url)
                service.kill9()
                run.window_message_ids |= before
            else:
                service.kill9()
            service.start()
            detail = service.label
        elif kind == "broker-pause":
            seconds = rng.uniform(1.0, args.max_pause)
            platform.broker.pause()
            await asyncio.sleep(seconds)
            platform.broker.resume()
            detail = f"{seconds:.1f}s"
        elif kind == "broker-restart":
            await asyncio.to_thread(platform.broker.restart)
            detail = "log kept" if isinstance(platform.broker, ApacheKafkaBroker) else "all topics lost"
        elif kind == "postgres-restart":
            postgres_done = True
            await asyncio.to_thread(platform.postgres.restart)
            run.window_message_ids |= await asyncio.to_thread(sending_message_ids, platform.database_url)
            detail = "fast shutdown + start"
        elif kind == "webhook-5xx":
            seconds = rng.uniform(1.0, 8.0)
            platform.webhook_sink.failing.set()
            await asyncio.sleep(seconds)
            platform.webhook_sink.failing.clear()
            detail = f"{seconds:.1f}s"
        else:  # smtp-4xx
            seconds = rng.uniform(1.0, 8.0)
            platform.sink.fail_with(451, "4.3.0 chaos: try again later")
            await asyncio.sleep(seconds)
            platform.sink.accept()
            detail = f"{seconds:.1f}s"
        run.faults.append({"at": round(time.monotonic(), 3), "kind": kind.partition(":")[0], "detail": detail})
        run.last_fault_end = time.monotonic()
        say(f"fault {len(run.faults)}: {kind} {detail}")
        await asyncio.sleep(rng.uniform(0.3, args.fault_gap))


async def submit_leads(platform: Platform, run: Run, emails: list[str], rate: float, deadline: float) -> float:
    """POST each lead once at ``rate`` per second, round robin over the intakes; a lead whose answer did
    not come (refused, 5xx, 503, timeout) is sent again with the same Idempotency-Key until ``deadline``.
    At most ``IN_FLIGHT`` requests are open at once (a client with thousands of waiting requests spends
    its CPU in the connection pool, not on the platform). Returns the leads per second achieved."""
    urls = platform.intake_urls()
    start = time.monotonic()
    gate = asyncio.Semaphore(IN_FLIGHT)
    # aiohttp rather than httpx: at 100 requests/s httpx alone took a third of a core of these two,
    # CPU the platform under test then did not have.
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10.0)) as client:

        async def one(index: int, address: str) -> None:
            key = uuid.uuid4().hex
            body = {"email": address, "first_name": f"Lead{index}", "source": SOURCE, "consent": {"marketing": True}}
            attempt = 0
            while time.monotonic() < deadline:
                url = urls[(index + attempt) % len(urls)]
                attempt += 1
                run.attempts += 1
                status: int | None = None
                async with gate:
                    sent_at = time.monotonic()
                    try:
                        async with client.post(
                            f"{url}/v1/leads", json=body, headers={"Idempotency-Key": key}
                        ) as response:
                            status, text = response.status, await response.text()
                    except (aiohttp.ClientError, TimeoutError):
                        status = None
                if status is None:
                    run.refused[0] += 1
                elif status in (200, 202):
                    # Latency counts from the request that was accepted: the platform's, not the client's.
                    run.accepted[address] = (uuid.UUID(json.loads(text)["id"]), sent_at, time.monotonic())
                    return
                else:
                    run.refused[status] += 1
                    if 400 <= status < 500 and status not in (408, 429):
                        say(f"lead {address} refused for good: {status} {text[:200]}")
                        return
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))

        tasks = []
        for index, address in enumerate(emails):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index, address)))
        await asyncio.gather(*tasks)
    return len(emails) / max(time.monotonic() - start, 1e-9)


def drained(database_url: str) -> dict[str, int] | None:
    """What is still unfinished (all zero = drained), or None while PostgreSQL does not answer."""
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            row = conn.execute(
                """SELECT (SELECT count(*) FROM leads WHERE enrolled_at IS NULL),
                          (SELECT count(*) FROM enrollments WHERE status = 'active'),
                          (SELECT count(*) FROM messages WHERE status NOT IN ('sent', 'dead', 'skipped')),
                          (SELECT count(*) FROM outbox WHERE published_at IS NULL)"""
            ).fetchone()
            webhooks = pending_webhooks(conn)
    except psycopg.OperationalError:
        return None
    assert row is not None
    names = ("unenrolled_leads", "active_enrollments", "unfinished_messages", "unpublished_outbox")
    return {**dict(zip(names, row, strict=True)), "pending_webhooks": webhooks}


def received_messages(sink: SinkProcess) -> tuple[Counter[uuid.UUID], dict[uuid.UUID, float]]:
    """Copies received per message id, and the first receive time of each (epoch seconds)."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    copies: Counter[uuid.UUID] = Counter()
    first: dict[uuid.UUID, float] = {}
    for received, data in sink.messages():
        headers = parser.parsebytes(data)
        message_id = uuid.UUID(str(headers[IDEMPOTENCY_HEADER]))
        copies[message_id] += 1
        stamp = received.timestamp()
        first[message_id] = min(first.get(message_id, stamp), stamp)
    return copies, first


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def audit(platform: Platform, run: Run, calm_emails: set[str], clock_offset: float) -> dict[str, Any]:
    """Compare what the sink received with what PostgreSQL holds; the figures of the report."""
    copies, first_seen = received_messages(platform.sink)
    with psycopg.connect(platform.database_url) as conn:
        leads = {row[0]: (row[1], row[2]) for row in conn.execute("SELECT id, email, created_at FROM leads")}
        messages = conn.execute("SELECT id, lead_id, step_position, status FROM messages").fetchall()
        dead_lettered = {
            uuid.UUID(row[0])
            for row in conn.execute(
                "SELECT DISTINCT key FROM outbox WHERE topic = %s AND published_at IS NOT NULL", ("email.dispatch.dlq",)
            )
        }
    rejected = {address.casefold() for address in run.rejected_emails}
    by_lead: dict[uuid.UUID, dict[int, tuple[uuid.UUID, str]]] = {}
    for message_id, lead_id, position, status in messages:
        by_lead.setdefault(lead_id, {})[position] = (message_id, status)
    lost = sum(1 for _, (lead_id, _, _) in run.accepted.items() if lead_id not in leads)
    expected = delivered = duplicates = outside = 0
    should_be_dead: set[uuid.UUID] = set()
    for lead_id, (address, _) in leads.items():
        steps = by_lead.get(lead_id, {})
        if address.casefold() in rejected:
            should_be_dead |= {message_id for message_id, status in steps.values() if status != "skipped"}
            continue
        for position in range(STEPS):
            expected += 1
            if position not in steps or copies[steps[position][0]] == 0:
                lost += 1
                continue
            message_id = steps[position][0]
            delivered += 1
            extra = copies[message_id] - 1
            duplicates += extra
            if message_id not in run.window_message_ids:
                outside += extra
    latencies = []
    calm_latencies = []
    calm_by_second: dict[int, list[float]] = {}
    for address, (lead_id, t0, _) in run.accepted.items():
        message_id, _ = by_lead.get(lead_id, {}).get(0, (None, ""))
        if message_id is None or message_id not in first_seen or address.casefold() in rejected:
            continue
        latency_ms = (first_seen[message_id] - (t0 + clock_offset)) * 1000
        latencies.append(latency_ms)
        if address in calm_emails:
            calm_latencies.append(latency_ms)
            calm_by_second.setdefault(int(t0 - run.started_at), []).append(latency_ms)
    for second, values in sorted(calm_by_second.items()):
        say(
            f"calm second {second}: {len(values)} first emails, p50 {percentile(values, 0.5):.0f} ms, "
            f"max {max(values):.0f} ms"
        )
    hops = calm_hops(platform.database_url, [run.accepted[a][0] for a in calm_emails if a in run.accepted])
    say(f"calm phase, where the first email's time goes (p50/p99 ms): {hops}")
    remaining = drained(platform.database_url) or {}
    return {
        "leads": len(leads),
        "leads_acknowledged": len(run.accepted),
        "faults": len(run.faults),
        "faults_by_kind": dict(Counter(f["kind"] for f in run.faults)),
        "emails_expected": expected,
        "emails_delivered": delivered,
        "lost": lost,
        "duplicates": duplicates,
        "duplicates_outside_window": outside,
        "window_messages": len(run.window_message_ids),
        "stuck": sum(remaining.values()),
        "stuck_detail": remaining,
        "dead_lettered": len(dead_lettered),
        "permanently_rejected": len(should_be_dead),
        "dlq_mismatch": len(dead_lettered ^ should_be_dead),
        "first_email_p50_ms": round(percentile(latencies, 0.5)),
        "first_email_p99_ms": round(percentile(latencies, 0.99)),
        "calm_first_email_p50_ms": round(percentile(calm_latencies, 0.5)),
        "calm_first_email_p99_ms": round(percentile(calm_latencies, 0.99)),
        "calm_hops_ms": hops,
        "http_attempts": run.attempts,
        "http_refusals": {str(k): v for k, v in sorted(run.refused.items())},
    }


def calm_hops(database_url: str, lead_ids: list[uuid.UUID]) -> dict[str, list[int]]:
    """p50 and p99 of each hop of the first email of ``lead_ids``, from PostgreSQL's timestamps: intake's
    transaction to the relay's pass that published ``leads.accepted``, to the scheduler's enrollment
    (Kafka and the consumer), to the step emitted, to the relay's pass that published ``email.dispatch``,
    to the dispatcher's claim (Kafka and the consumer), to the outcome recorded (the SMTP transaction).
    A relay's timestamp is the start of its pass; the broker's acknowledgement comes a little later."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """WITH accepted AS (
                   SELECT DISTINCT ON (key) key, published_at FROM outbox
                   WHERE topic = 'leads.accepted' ORDER BY key, id),
               dispatched AS (
                   SELECT DISTINCT ON (key) key, published_at FROM outbox
                   WHERE topic = 'email.dispatch' ORDER BY key, id)
               SELECT extract(epoch FROM a.published_at - l.created_at),
                      extract(epoch FROM l.enrolled_at - a.published_at),
                      extract(epoch FROM m.queued_at - l.enrolled_at),
                      extract(epoch FROM d.published_at - m.queued_at),
                      extract(epoch FROM m.sending_at - d.published_at),
                      extract(epoch FROM m.sent_at - m.sending_at)
               FROM leads l
               JOIN messages m ON m.lead_id = l.id AND m.step_position = 0
               JOIN accepted a ON a.key = l.id::text
               JOIN dispatched d ON d.key = m.enrollment_id::text
               WHERE l.id = ANY(%s) AND m.status = 'sent'""",
            (lead_ids,),
        ).fetchall()
    names = ("relay_accepted", "kafka_to_enrolled", "enrolled_to_emitted", "relay_dispatch", "kafka_to_claimed", "smtp")
    return {
        name: [round(percentile([float(row[i]) * 1000 for row in rows], q)) for q in (0.5, 0.99)]
        for i, name in enumerate(names)
    }


def first_steps_done(database_url: str) -> int:
    """How many first steps have an outcome (sent or dead): the calm phase is over when all have."""
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM messages WHERE step_position = 0 AND status IN ('sent', 'dead')"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def main_async(
    args: argparse.Namespace, platform: Platform, rng: random.Random, emails: list[str]
) -> dict[str, Any]:
    run = Run()
    run.rejected_emails = platform.rejected
    calm_count = min(len(emails), round(args.calm_rate * args.calm_seconds))
    calm, rest = emails[:calm_count], emails[calm_count:]
    # Receive times are wall clock (the sink's file names); submit times monotonic.
    clock_offset = time.time() - time.monotonic()

    async def supervise(stop: asyncio.Event) -> None:
        while not stop.is_set():
            platform.supervise()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    stop = asyncio.Event()
    supervisor = asyncio.create_task(supervise(stop))
    try:
        say(f"calm phase: {len(calm)} leads at {args.calm_rate}/s, no faults")
        run.started_at = time.monotonic()
        calm_rate = await submit_leads(platform, run, calm, args.calm_rate, time.monotonic() + 120)
        # Faults start once the calm leads have their first email: their latency is the fault-free one.
        settle_deadline = time.monotonic() + 120
        while await asyncio.to_thread(first_steps_done, platform.database_url) < len(run.accepted):
            if time.monotonic() > settle_deadline:
                say("calm leads still without a first email after 120 s; starting the faults anyway")
                break
            await asyncio.sleep(0.2)
        started = time.monotonic()
        until = started + args.duration
        say(f"fault phase: {len(rest)} leads over {args.duration}s while faults are injected")
        platform.accelerate_jobs()
        rate = max(1.0, len(rest) / args.duration)
        await asyncio.gather(
            submit_leads(platform, run, rest, rate, until + 180),
            inject_faults(platform, run, rng, until, args.scripted),
        )
        say(f"{len(run.faults)} faults injected; waiting for the pipeline to drain")
        deadline = time.monotonic() + args.drain_timeout
        drain_s = -1.0
        while time.monotonic() < deadline:
            remaining = await asyncio.to_thread(drained, platform.database_url)
            if remaining is not None and not any(remaining.values()):
                drain_s = time.monotonic() - run.last_fault_end
                break
            await asyncio.sleep(0.5)
        if drain_s < 0:
            say(f"not drained after {args.drain_timeout}s: {await asyncio.to_thread(drained, platform.database_url)}")
        # Whatever a killed dispatcher left in `sending` is part of the window by definition.
        run.window_message_ids |= await asyncio.to_thread(sending_message_ids, platform.database_url)
    finally:
        stop.set()
        await supervisor
    result = audit(platform, run, set(calm), clock_offset)
    result.update(audit_webhooks(platform.webhook_sink, platform.database_url, run.window_message_ids))
    result["drain_s"] = round(drain_s, 1) if drain_s >= 0 else None
    result["calm_leads_per_s"] = round(calm_rate, 1)
    result["service_restarts"] = sum(s.starts - 1 for s in platform.services)
    result["seed"] = args.seed
    result["broker"] = args.broker
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=3000, help="leads in total (default 3000)")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of the fault phase (default 180)")
    parser.add_argument(
        "--min-faults", type=int, default=50, help="the fault phase goes on until this many faults (default 50)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed: the same seed, the same fault plan")
    parser.add_argument("--calm-rate", type=float, default=100.0, help="leads/s of the calm phase (default 100)")
    parser.add_argument("--calm-seconds", type=float, default=10.0, help="length of the calm phase (default 10)")
    parser.add_argument("--rejected", type=int, default=5, help="addresses the sink rejects with 550 (default 5)")
    parser.add_argument("--max-pause", type=float, default=30.0, help="longest broker pause in seconds")
    parser.add_argument("--fault-gap", type=float, default=2.0, help="longest gap between faults in seconds")
    parser.add_argument("--step-delay", type=int, default=3.0, help="delay of steps two and three in seconds")
    parser.add_argument("--job-interval", type=float, default=3.0, help="seconds between retry-failed runs")
    parser.add_argument("--reconcile-after", type=float, default=5.0, help="retry-failed age thresholds in seconds")
    parser.add_argument(
        "--resend-sending-after", type=float, default=30.0, help="retry-failed requeues `sending` after this (s)"
    )
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to wait for the drain")
    parser.add_argument(
        "--scripted", action="store_true", help="one fault of each kind (killing each service once) before random ones"
    )
    parser.add_argument(
        "--broker", choices=("tansu", "kafka"), default="tansu", help="Tansu (default) or Apache Kafka from .tools"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, mail, database)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="healingwork-chaos-"))
    say(f"work directory {work}")
    platform = Platform(work, args)
    rng = random.Random(args.seed)
    emails = [f"lead{i}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}@example.com" for i in range(args.leads)]
    platform.rejected = set(rng.sample(emails, min(args.rejected, len(emails))))
    try:
        platform.start()
        result = asyncio.run(main_async(args, platform, rng, emails))
    finally:
        platform.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
