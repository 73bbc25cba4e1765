"""``healingwork <command>``: one CLI for every process the platform runs.

Every command reads its settings from the environment first; a configuration problem prints one
message listing everything that is wrong and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from services.common.config import (
    ConfigError,
    DatabaseSettings,
    DeadLetterSettings,
    DispatcherSettings,
    IntakeSettings,
    SchedulerSettings,
    load_settings,
)
from services.common.logs import configure_logging

EXIT_CONFIG = 2
EXIT_FAILURE = 1


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def _intake(args: argparse.Namespace) -> None:
    import uvicorn

    from services.intake.app import create_app

    settings = load_settings(IntakeSettings)
    configure_logging("intake", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=20,
    )


def _scheduler(args: argparse.Namespace) -> None:
    from services.scheduler.service import run_scheduler

    settings = load_settings(SchedulerSettings)
    configure_logging("scheduler", settings.log_level)
    asyncio.run(run_scheduler(settings))


def _dispatcher(args: argparse.Namespace) -> None:
    from services.dispatcher.service import run_dispatcher

    settings = load_settings(DispatcherSettings)
    configure_logging("dispatcher", settings.log_level)
    asyncio.run(run_dispatcher(settings))


def _migrate(args: argparse.Namespace) -> None:
    import psycopg

    from services.common.migrate import apply_migrations

    settings = load_settings(DatabaseSettings)
    configure_logging("migrate", settings.log_level)
    try:
        applied = apply_migrations(settings.database_url, connect_timeout_s=round(settings.db_connect_timeout_s))
    except psycopg.OperationalError as error:
        raise CommandError(f"cannot reach PostgreSQL: {str(error).strip().splitlines()[0]}") from error
    print(f"migrations applied: {', '.join(map(str, applied))}" if applied else "schema is up to date")


def _sequences_apply(args: argparse.Namespace) -> None:
    from services.common.sequences import InvalidSequence, apply_sequence_files

    settings = load_settings(DatabaseSettings)
    configure_logging("sequences", settings.log_level)
    try:
        for applied in asyncio.run(apply_sequence_files(settings, [Path(p) for p in args.paths])):
            state = f"revision {applied.revision}" + ("" if applied.changed else " (unchanged)")
            print(f"sequence {applied.namespace}/{applied.name}: {state}")
    except InvalidSequence as error:
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
    from services.dev.stack import run_dev

    run_dev(port=args.port, mail_dir=Path(args.mail_dir), data_dir=Path(args.data_dir), fresh=args.fresh)


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
    add("migrate", _migrate, "Bring the PostgreSQL schema up to date (safe to run concurrently)")

    sequences = commands.add_parser("sequences", help="Manage Sequences stored in PostgreSQL")
    sequence_commands = sequences.add_subparsers(dest="sequence_command", required=True, metavar="<action>")
    apply = sequence_commands.add_parser(
        "apply", help="Store Sequence resources from YAML files or folders ('-' reads standard input)"
    )
    apply.add_argument("paths", nargs="+", metavar="PATH")
    apply.set_defaults(run=_sequences_apply)

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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``healingwork`` command."""
    args = build_parser().parse_args(argv)
    name = " ".join(filter(None, [args.command, getattr(args, "sequence_command", None)]))
    try:
        args.run(args)
    except ConfigError as error:
        print(f"healingwork {name}: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except CommandError as error:
        print(f"healingwork {name}: {error}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
