"""``healingwork <command>``: one CLI for every process the platform runs.

Every command reads its settings from the environment first; a configuration problem prints one
message listing everything that is wrong and exits with status 2, never a traceback. A dependency a
command cannot reach (PostgreSQL, Kafka, the Kubernetes API) or a port it cannot listen on is one line
naming it, and exit status 1. The long-running services do not wait for PostgreSQL or Kafka at
start: they start, report not ready, and keep trying (see docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from services.common.config import (
    ClientsSettings,
    ConfigError,
    DatabaseSettings,
    DeadLetterSettings,
    DispatcherSettings,
    IntakeSettings,
    OperatorSettings,
    PreviewSettings,
    SchedulerSettings,
    WebhooksSettings,
    load_settings,
)
from services.common.db import UNAVAILABLE_ERRORS, DatabaseUnreachable, unreachable_message
from services.common.logs import configure_logging
from services.jobs.commands import add_job_commands

EXIT_CONFIG = 2
EXIT_FAILURE = 1
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def _intake(args: argparse.Namespace) -> None:
    import uvicorn

    from services.common.shutdown import ShutdownClock, arm_exit_watchdog, note_stop_signal
    from services.intake.app import create_app

    settings = load_settings(IntakeSettings)
    configure_logging("intake", settings.log_level)
    shutdown = ShutdownClock(settings.shutdown_grace_s)

    class IntakeServer(uvicorn.Server):
        """uvicorn owns intake's signals: the first one starts the shutdown clock and its watchdog."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                note_stop_signal()
                arm_exit_watchdog(shutdown.deadline())
            super().handle_exit(sig, frame)

    api_socket = _listening_socket(settings.host, settings.port)
    metrics_socket = (
        _listening_socket(settings.host, settings.health_port, "/healthz, /readyz and /metrics")
        if settings.health_port
        else None
    )
    config = uvicorn.Config(
        create_app(settings, metrics_socket=metrics_socket),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # The client IP is resolved by intake itself, through TRUSTED_PROXIES only.
        proxy_headers=False,
        # Requests in flight get the grace period less the part kept for closing the clients.
        timeout_graceful_shutdown=max(1, int(shutdown.drain_s)),
    )
    IntakeServer(config).run(sockets=[api_socket])


def _listening_socket(host: str, port: int, serving: str = "") -> socket.socket:
    """Bind one of intake's ports before anything else starts: a port that is taken is one line, not a log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        where = f"{host}:{port} for {serving}" if serving else f"{host}:{port}"
        raise CommandError(f"cannot listen on {where}: {error.strerror}") from error
    sock.set_inheritable(True)
    return sock


def _scheduler(args: argparse.Namespace) -> None:
    from services.common.shutdown import run_service
    from services.scheduler.service import run_scheduler

    settings = load_settings(SchedulerSettings)
    configure_logging("scheduler", settings.log_level)
    run_service(run_scheduler(settings))


def _dispatcher(args: argparse.Namespace) -> None:
    from services.common.shutdown import run_service
    from services.dispatcher.service import run_dispatcher

    settings = load_settings(DispatcherSettings)
    configure_logging("dispatcher", settings.log_level)
    run_service(run_dispatcher(settings))


def _webhooks(args: argparse.Namespace) -> None:
    from services.common.shutdown import run_service
    from services.outgoing_webhooks.service import run_webhooks

    settings = load_settings(WebhooksSettings)
    configure_logging("webhooks", settings.log_level)
    run_service(run_webhooks(settings))


def _migrate(args: argparse.Namespace) -> None:
    from services.common.migrate import apply_migrations

    settings = load_settings(DatabaseSettings)
    configure_logging("migrate", settings.log_level)
    applied = apply_migrations(settings.database_url, connect_timeout_s=round(settings.db_connect_timeout_s))
    print(f"migrations applied: {', '.join(map(str, applied))}" if applied else "schema is up to date")


def _operator(args: argparse.Namespace) -> None:
    from operators.sequence.main import run_operator

    settings = load_settings(OperatorSettings)
    configure_logging("operator", settings.log_level)
    if not _kubernetes_credentials_exist():
        raise CommandError(
            "cannot reach the Kubernetes API: no credentials (not in a pod with a service account,"
            " and no kubeconfig: set KUBECONFIG)"
        )
    asyncio.run(run_operator(settings))


def _kubernetes_credentials_exist() -> bool:
    """Whether any source kopf logs in with is there: an in-cluster service account or a kubeconfig."""
    import os

    if os.environ.get("KUBERNETES_SERVICE_HOST") and Path(SERVICE_ACCOUNT_TOKEN).exists():
        return True
    kubeconfigs = os.environ.get("KUBECONFIG", "").split(os.pathsep) if os.environ.get("KUBECONFIG") else []
    return any(Path(path).expanduser().is_file() for path in kubeconfigs or ["~/.kube/config"])


def unreachable(error: BaseException) -> str | None:
    """One line naming what a command could not reach (or listen on), or None for any other error:
    the outages :func:`main` does not name itself, also inside an exception group (a task group's).

    Kafka's errors are recognised only when aiokafka is already loaded, so this costs a command
    nothing that it did not import itself."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, UNAVAILABLE_ERRORS):
        return unreachable_message(error)
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    kafka_errors = sys.modules.get("aiokafka.errors")
    if kafka_errors and isinstance(error, kafka_errors.KafkaConnectionError | kafka_errors.KafkaTimeoutError):
        return f"cannot reach Kafka: {first_line}"
    health = sys.modules.get("services.common.health")
    if health and isinstance(error, health.CannotListen):
        return first_line
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return f"cannot listen: {first_line}"
    return None


def _sequence_paths(args: argparse.Namespace) -> list[Path]:
    paths = [*(args.filenames or []), *(args.paths or [])]
    if not paths:
        raise CommandError("give the Sequences to read with -f FILE|DIR ('-' reads standard input)")
    return [Path(p) for p in paths]


def _sequences_apply(args: argparse.Namespace) -> None:
    from services.common.sequences import InvalidSequence, apply_sequence_files

    paths = _sequence_paths(args)
    settings = load_settings(DatabaseSettings)
    configure_logging("sequences", settings.log_level)
    try:
        for applied in asyncio.run(apply_sequence_files(settings, paths)):
            state = f"revision {applied.revision}" + ("" if applied.changed else " (unchanged)")
            print(f"sequence {applied.namespace}/{applied.name}: {state}")
    except InvalidSequence as error:
        raise CommandError(str(error)) from error


def _sequences_preview(args: argparse.Namespace) -> None:
    from datetime import UTC, datetime

    from services.common.clock import utcnow
    from services.common.sequence_preview import parse_preview_events, parse_preview_lead, preview_sequence
    from services.common.sequences import InvalidSequence, load_manifests

    try:
        start = datetime.fromisoformat(args.at) if args.at else utcnow()
    except ValueError as error:
        raise CommandError(f"--at: {args.at!r} is not an ISO 8601 time such as 2026-03-27T08:00:00+01:00") from error
    if start.tzinfo is None:
        raise CommandError(f"--at: {args.at!r} needs a UTC offset, such as 2026-03-27T08:00:00+01:00")
    settings = load_settings(PreviewSettings)
    try:
        lead = parse_preview_lead(args.lead)
        events = parse_preview_events(args.events)
        manifests = load_manifests(_sequence_paths(args))
        if not manifests.sequences:
            raise CommandError("no Sequence found in the given files")
        for resource in manifests.sequences:
            print(f"# sequence {resource.metadata.namespace}/{resource.metadata.name}")
            steps = preview_sequence(resource, lead, start, manifests.config_map, settings, events)
            if not steps:
                print("not enrolled: trigger.when is false for this lead")
            for number, step in enumerate(steps, start=1):
                print(f"\n## step {number}/{len(steps)} {step.name}")
                print(f"outcome: {step.outcome}" + (f" (variant {step.variant})" if step.variant else ""))
                if step.outcome.startswith(("skip", "exit", "fail")):
                    print(f"at: {step.send_at.astimezone(UTC).isoformat()} (UTC)")
                    continue
                print(f"sends at: {step.send_at.astimezone(UTC).isoformat()} (UTC)")
                print(f"          {step.local_send_at.isoformat()} ({step.zone_label})")
                for name, value in step.headers:
                    print(f"{name}: {value}")
                print("--- text ---")
                print(step.text.rstrip("\n"))
                if step.html is not None:
                    print("--- html ---")
                    print(step.html.rstrip("\n"))
    except InvalidSequence as error:
        raise CommandError(str(error)) from error


def _clients(args: argparse.Namespace) -> None:
    from services.intake.clients_command import run_clients_command

    signing = args.client_command in ("create", "signing-secret")
    settings = load_settings(ClientsSettings if signing else DatabaseSettings)
    configure_logging("clients", settings.log_level)
    try:
        print(asyncio.run(run_clients_command(settings, args)))
    except ValueError as error:
        raise CommandError(str(error)) from error


def _dlq(args: argparse.Namespace) -> None:
    from services.dispatcher.dead_letters_cli import run_dlq_command

    settings = load_settings(DeadLetterSettings)
    configure_logging("dlq", settings.log_level)
    try:
        print(asyncio.run(run_dlq_command(settings, args)), end="")
    except ValueError as error:
        raise CommandError(str(error)) from error


def _dev(args: argparse.Namespace) -> None:
    # The development stack (embedded PostgreSQL, broker, SMTP sink) lives in the top-level `devstack`
    # package of a source checkout; the image and the wheel ship only what runs in production.
    try:
        from devstack.stack import run_dev
    except ImportError as error:
        if error.name != "devstack" and not (error.name or "").startswith("devstack."):
            raise
        raise CommandError(
            "the development stack is not installed here (it ships with a source checkout, not the image):"
            " run `make dev` in a clone of the repository"
        ) from error

    run_dev(
        port=args.port, mail_dir=Path(args.mail_dir), data_dir=Path(args.data_dir), fresh=args.fresh, broker=args.broker
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="healingwork", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    def add(name: str, run: Callable[[argparse.Namespace], None], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        return sub

    add("intake", _intake, "Serve the HTTP API (leads, health, metrics) and relay the outbox")
    add("scheduler", _scheduler, "Enroll accepted leads into Sequences and emit due steps")
    add("dispatcher", _dispatcher, "Render and send due emails over SMTP")
    add("webhooks", _webhooks, "Deliver outgoing webhooks (Standard Webhooks signatures) to the registered endpoints")
    add("operator", _operator, "Reconcile Sequence resources from Kubernetes into PostgreSQL and their status")
    add("migrate", _migrate, "Bring the PostgreSQL schema up to date (safe to run concurrently)")
    add_job_commands(commands)

    sequences = commands.add_parser("sequences", help="Manage Sequences stored in PostgreSQL")
    sequence_commands = sequences.add_subparsers(dest="sequence_command", required=True, metavar="<action>")
    apply = sequence_commands.add_parser(
        "apply", help="Store Sequence resources from YAML files or folders ('-' reads standard input)"
    )
    preview = sequence_commands.add_parser(
        "preview",
        help="Print every step of Sequences as one lead would get it (headers, footer, tracking links) and when"
        " it would be sent (UTC and the lead's time zone)",
    )
    for sub in (apply, preview):
        sub.add_argument(
            "-f", "--filename", dest="filenames", action="append", metavar="FILE|DIR", help="'-' reads standard input"
        )
        sub.add_argument("paths", nargs="*", metavar="PATH", help="more files or folders (like -f)")
    apply.set_defaults(run=_sequences_apply)
    preview.add_argument(
        "--lead", required=True, help='the lead as JSON: {"first_name": "Ada", "timezone": "Europe/Berlin", ...}'
    )
    preview.add_argument("--at", help="enrollment time, ISO 8601 with offset (default: now)")
    preview.add_argument(
        "--events",
        help='the lead\'s events for conditions, as JSON: [{"type": "opened", "step": "hello"}, ...] (at: the'
        " enrollment time unless given)",
    )
    preview.set_defaults(run=_sequences_preview)

    clients = commands.add_parser("clients", help="Manage API clients (keys, scopes) of the intake API")
    client_commands = clients.add_subparsers(dest="client_command", required=True, metavar="<action>")
    create = client_commands.add_parser(
        "create", help="Create a client; prints its API key and request-signing secret, shown only once"
    )
    create.add_argument("name", help="a slug naming the client, such as crm or landing-pages")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=["leads:write", "leads:read", "admin"],
        help="a scope to grant (repeat for several; default leads:write)",
    )
    create.set_defaults(run=_clients)
    client_commands.add_parser("list", help="List clients, revoked ones included").set_defaults(run=_clients)
    revoke = client_commands.add_parser("revoke", help="Revoke a client's key and signing secret at once")
    revoke.add_argument("name")
    revoke.set_defaults(run=_clients)
    reissue = client_commands.add_parser(
        "signing-secret",
        help="Print a client's request-signing secret under the current REQUEST_SIGNING_KEYS key (after a rotation)",
    )
    reissue.add_argument("name")
    reissue.set_defaults(run=_clients)

    dlq = commands.add_parser("dlq", help="Inspect and re-drive dead letters (messages that will not be delivered)")
    dlq_commands = dlq.add_subparsers(dest="sequence_command", required=True, metavar="<action>")
    dlq_list = dlq_commands.add_parser("list", help="List dead messages, most recent first")
    dlq_list.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    dlq_list.add_argument("--json", action="store_true", help="one JSON object per line")
    dlq_list.set_defaults(run=_dlq)
    replay = dlq_commands.add_parser("replay", help="Queue dead messages again with fresh attempts")
    chosen = replay.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--id", action="append", dest="ids", metavar="MESSAGE_ID", help="a message id (repeatable)")
    chosen.add_argument("--all", action="store_true", help="every dead message")
    replay.set_defaults(run=_dlq)

    dev = add("dev", _dev, "Run the whole platform on this machine (embedded PostgreSQL, broker and SMTP sink)")
    dev.add_argument("--port", type=int, default=8000, help="intake port (default 8000)")
    dev.add_argument("--mail-dir", default=".dev/mail", help="where received emails are written as .eml files")
    dev.add_argument("--data-dir", default=".dev", help="where the embedded PostgreSQL keeps its data")
    dev.add_argument("--fresh", action="store_true", help="start from an empty database")
    dev.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="tansu (default: in memory, starts in a second) or kafka (Apache Kafka from `make tools`)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``healingwork`` command."""
    args = build_parser().parse_args(argv)
    action = next(
        (getattr(args, name) for name in ("sequence_command", "client_command", "job") if getattr(args, name, None)),
        None,
    )
    name = " ".join(filter(None, [args.command, action]))
    try:
        args.run(args)
    except ConfigError as error:
        print(f"healingwork {name}: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except (CommandError, DatabaseUnreachable) as error:
        print(f"healingwork {name}: {error}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    except UNAVAILABLE_ERRORS as error:
        # The one place an unreachable database becomes the command's one-line error (the migrations
        # and anything else that connects without services.common.db.command_transaction).
        print(f"healingwork {name}: {unreachable_message(error)}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:
        message = unreachable(error)
        if message is None:
            raise  # a bug: its traceback is what a developer needs
        print(f"healingwork {name}: {message}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)


if __name__ == "__main__":
    main()
