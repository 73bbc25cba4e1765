"""``healingwork job <name>``: the batch jobs as CLI commands (what the CronJobs run).

Exit status: 0 when the run succeeded (or found another run at work), 1 when it failed (one log
line says why), 2 for invalid configuration or arguments, 143 when SIGTERM ended the run (one
line says so).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import date
from functools import partial
from typing import Any

from services.common.config import JobSettings, load_settings
from services.common.logs import configure_logging

EXIT_TERMINATED = 128 + signal.SIGTERM


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text!r}")
    return value


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date as YYYY-MM-DD, not {text!r}") from None


def stats_days(args: argparse.Namespace, window_days: int) -> list[date]:
    """The days ``aggregate-stats`` recomputes: ``--day``, or the last ``--days`` (default: the window)."""
    from services.jobs.aggregate_stats import default_days

    if args.day is not None:
        return [args.day]
    return default_days(args.days or window_days)


def _run(args: argparse.Namespace) -> None:
    from services.jobs.runner import JobWork, run_job

    settings = load_settings(JobSettings)
    configure_logging("job", settings.log_level)
    work: JobWork
    if args.job == "retry-failed":
        from services.jobs.retry_failed import retry_failed

        work = partial(retry_failed, batch_size=args.batch_size)
    elif args.job == "aggregate-stats":
        from services.jobs.aggregate_stats import aggregate_stats

        work = partial(aggregate_stats, days=stats_days(args, settings.stats_window_days))
    else:
        from services.jobs.purge import purge

        work = partial(purge, batch_size=args.batch_size)

    async def run() -> int:
        # SIGTERM cancels the run, which then logs its one line and rolls back; exit 143 as if killed.
        current = asyncio.current_task()
        assert current is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, current.cancel)
        try:
            return (await run_job(args.job, settings, work)).exit_code
        except asyncio.CancelledError:
            return EXIT_TERMINATED

    code = asyncio.run(run())
    if code:
        sys.exit(code)


def add_job_commands(commands: Any) -> None:
    """Add ``job <name>`` to the CLI's subcommands (``commands`` is argparse's subparsers action)."""
    job = commands.add_parser("job", help="Run a batch job once (what the CronJobs run)")
    jobs = job.add_subparsers(dest="job", required=True, metavar="<name>")

    retry = jobs.add_parser(
        "retry-failed",
        help="Re-enqueue due retries (dead-letter past the attempt cap); re-publish lost dispatches and leads",
    )
    retry.add_argument("--batch-size", type=_positive, help="rows per transaction (default: RETRY_BATCH_SIZE)")

    stats = jobs.add_parser("aggregate-stats", help="Recompute the daily rollups (default: yesterday and today, UTC)")
    which = stats.add_mutually_exclusive_group()
    which.add_argument("--day", type=_day, help="recompute this UTC day only (YYYY-MM-DD)")
    which.add_argument("--days", type=_positive, help="recompute the last N UTC days, today included")

    purge = jobs.add_parser("purge", help="Delete events, published outbox rows and keys past their retention")
    purge.add_argument("--batch-size", type=_positive, help="rows per transaction (default: PURGE_BATCH_SIZE)")

    for parser in (retry, stats, purge):
        parser.set_defaults(run=_run)
