"""Batch jobs against the scheduler's hot loop: does a job running beside it slow it down?

Run: ``uv run python -m bench.long_transaction`` (an embedded PostgreSQL, or ``DATABASE_URL`` when set;
each measurement gets a fresh database). The last output line is one JSON object.

Each round drains the same number of due enrollments with ``emit_due_steps`` (the scheduler's loop,
batches of 1,000, one transaction each) and reports due steps per second:

* ``baseline``: the scheduler alone (the in-run baseline);
* ``with_jobs``: while the batch jobs as they are written (aggregate-stats, retry-failed and purge, each
  in short transactions) run back to back in a loop beside it; ``jobs_ratio`` = with_jobs / baseline,
  the target is at least 0.7;
* ``with_long_transaction``: while one REPEATABLE READ transaction (the anti-pattern: a report that
  reads everything in one snapshot) stays open for the whole drain, after reading the tables once;
  ``long_transaction_ratio`` shows what keeping jobs in short transactions avoids.

Each round is measured ``--repeats`` times (default 3) and the median kept; the rounds interleave so a
machine that gets busier or quieter during the run affects all three alike.

``--smoke`` (bench/smoke.py): the sizes of ``SMOKE`` for the options not given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics

import psycopg

from bench.scheduler import add_enrollments, drain, drop_database, fresh_database, prepare, print_measured_on_postgres
from bench.smoke import parse_arguments
from services.common.config import JobSettings
from services.common.migrate import apply_migrations
from services.jobs.aggregate_stats import aggregate_stats
from services.jobs.purge import purge
from services.jobs.retry_failed import retry_failed
from services.jobs.runner import run_job

SMOKE = {"due": 2_000, "repeats": 1}  # --smoke (bench/smoke.py)


async def jobs_in_a_loop(url: str, stop: asyncio.Event) -> int:
    """The three batch jobs back to back until ``stop``; returns how many runs completed."""
    settings = JobSettings(database_url=url, db_statement_timeout_s=600)
    runs = 0
    while not stop.is_set():
        for name, work in (("aggregate-stats", aggregate_stats), ("retry-failed", retry_failed), ("purge", purge)):
            outcome = await run_job(name, settings, work)
            assert outcome.status == "succeeded", outcome
            runs += 1
    return runs


async def long_transaction(url: str, started: asyncio.Event, stop: asyncio.Event) -> None:
    """One REPEATABLE READ snapshot held open until ``stop``: vacuum cannot remove anything newer."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        async with conn.transaction():
            await conn.execute("SELECT count(*) FROM enrollments")
            await conn.execute("SELECT count(*) FROM messages")
            started.set()
            await stop.wait()


async def one_round(server_url: str, due: int, beside: str) -> float:
    url = fresh_database(server_url)
    try:
        apply_migrations(url)
        await prepare(url)
        await add_enrollments(url, due, due=True)
        stop = asyncio.Event()
        helper: asyncio.Task[object] | None = None
        if beside == "jobs":
            helper = asyncio.create_task(jobs_in_a_loop(url, stop))
        elif beside == "long_transaction":
            started = asyncio.Event()
            helper = asyncio.create_task(long_transaction(url, started, stop))
            await started.wait()
        try:
            emitted, seconds = await drain(url)
        finally:
            stop.set()
            if helper is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
        assert emitted == due, emitted
        return emitted / seconds
    finally:
        drop_database(server_url, url)


async def measure(server_url: str, due: int, repeats: int) -> dict[str, object]:
    rates: dict[str, list[float]] = {"baseline": [], "jobs": [], "long_transaction": []}
    for _ in range(repeats):
        for beside in rates:
            rate = await one_round(server_url, due, beside)
            rates[beside].append(rate)
            print(f"{beside}: {rate:.0f} due steps/s")
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "due": due,
        "repeats": repeats,
        "baseline_steps_per_s": round(median["baseline"]),
        "with_jobs_steps_per_s": round(median["jobs"]),
        "with_long_transaction_steps_per_s": round(median["long_transaction"]),
        "jobs_ratio": round(median["jobs"] / median["baseline"], 3),
        "long_transaction_ratio": round(median["long_transaction"] / median["baseline"], 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.long_transaction", description=__doc__.split("\n\n")[0])
    parser.add_argument("--due", type=int, default=20_000, help="due enrollments per round (default 20,000)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per variant; the median is kept")
    args = parse_arguments(parser, SMOKE)
    print_measured_on_postgres(lambda url: measure(url, args.due, args.repeats))


if __name__ == "__main__":
    main()
