"""Running one batch job the same way every time, whatever the job does.

A job is a function from a :class:`JobContext` to counts of what it did. :func:`run_job` gives it:

* a run id, and the job name and run id on every log line of the run (JSON on stderr);
* a PostgreSQL session advisory lock per job name, so two runs of one job never overlap (a run that
  finds the lock taken does nothing and says so: the other run is doing the work);
* one log line that says what failed when it fails, and an outcome the CLI maps to the exit code
  (0 only on success, so a CronJob's ``backoffLimit`` retries real failures);
* duration, counts and last-success time pushed to a Prometheus Pushgateway when ``PUSHGATEWAY_URL``
  is set, and the error reported to Sentry when ``SENTRY_DSN`` is set (``sentry-sdk`` is optional).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

from services.common.config import ConfigError, JobSettings
from services.common.db import (
    UNAVAILABLE_ERRORS,
    Connection,
    Pool,
    connect,
    open_pool,
    transaction,
    unreachable_message,
)
from services.common.retry import retry_async

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """What a job function gets: its name, this run's id, the settings and a connection pool."""

    name: str
    run_id: str
    settings: JobSettings
    pool: Pool


# A job returns counts by kind (``{"requeued": 120, "dead": 3}``): logged, and pushed as metrics.
JobWork = Callable[[JobContext], Awaitable[dict[str, int]]]


@dataclass(frozen=True)
class JobOutcome:
    status: Literal["succeeded", "failed", "skipped"]
    run_id: str
    duration_s: float
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def exit_code(self) -> int:
        """0 for a run that succeeded or found another run at work; 1 for a failure."""
        return 1 if self.status == "failed" else 0


def lock_name(job: str) -> str:
    """The advisory lock's name; its key is ``hashtextextended(name, 0)``."""
    return f"healingwork.job.{job}"


async def run_job(name: str, settings: JobSettings, work: JobWork, *, run_id: str | None = None) -> JobOutcome:
    """Run ``work`` once under the job's advisory lock; never raises for a failure of the job itself."""
    run_id = run_id or uuid.uuid4().hex[:16]
    started = time.monotonic()
    with _log_context(name, run_id), _sentry(settings, name, run_id) as report_error:
        log.info("job started")
        try:
            async with _job_lock(settings, name) as acquired:
                if not acquired:
                    log.warning("job skipped: another run holds its lock and is doing the work")
                    return JobOutcome("skipped", run_id, time.monotonic() - started)
                pool = await open_pool(settings)
                try:
                    counts = await work(JobContext(name, run_id, settings, pool))
                finally:
                    await pool.close()
        except asyncio.CancelledError:
            # Cancelled by SIGTERM (a CronJob's deadline, a node drain): transactions roll back and the
            # lock goes with its connection; say so in one line, and let the cancellation propagate.
            log.error(f"job {name} failed: terminated before it finished")
            await push_job_metrics(settings, name, JobOutcome("failed", run_id, time.monotonic() - started))
            raise
        except Exception as error:
            outcome = JobOutcome("failed", run_id, time.monotonic() - started, error=describe_error(error))
            # The one line that says what failed; the traceback rides along in the same JSON object
            # unless the cause is a database outage, where it would add nothing.
            log.error(
                f"job {name} failed: {outcome.error}",
                exc_info=None if isinstance(error, UNAVAILABLE_ERRORS) else error,
                extra={"duration_s": round(outcome.duration_s, 3)},
            )
            report_error(error)
        else:
            outcome = JobOutcome("succeeded", run_id, time.monotonic() - started, counts=counts)
            log.info("job succeeded", extra={"duration_s": round(outcome.duration_s, 3), "counts": counts})
        await push_job_metrics(settings, name, outcome)
        return outcome


def describe_error(error: BaseException) -> str:
    """A one-line description of why a run failed."""
    if isinstance(error, UNAVAILABLE_ERRORS):
        return unreachable_message(error)
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


@contextlib.asynccontextmanager
async def _job_lock(settings: JobSettings, name: str) -> AsyncIterator[bool]:
    """Hold the job's session advisory lock on a dedicated connection; yields whether it was acquired.

    A session lock (not a transaction lock) because the job itself runs many short transactions on
    other connections; the lock goes away with this connection if the process dies.
    """
    conn = await connect(settings)
    async with conn:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS ok", (lock_name(name),))
        row = await cursor.fetchone()
        acquired = bool(row and row["ok"])
        try:
            yield acquired
        finally:
            if acquired:
                with contextlib.suppress(*UNAVAILABLE_ERRORS):
                    await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lock_name(name),))


async def in_batches(pool: Pool, step: Callable[[Connection], Awaitable[int]], batch_size: int) -> list[int]:
    """Run ``step`` (which handles at most ``batch_size`` items) in one short transaction at a time,
    until a batch comes back smaller than ``batch_size``; returns the size of every batch."""
    sizes: list[int] = []
    while True:
        async with transaction(pool) as conn:
            done = await step(conn)
        sizes.append(done)
        if done < batch_size:
            return sizes


class _RunContext(logging.Filter):
    def __init__(self, job: str, run_id: str) -> None:
        super().__init__()
        self.job, self.run_id = job, run_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.job, record.run_id = self.job, self.run_id
        return True


@contextlib.contextmanager
def _log_context(job: str, run_id: str) -> Iterator[None]:
    """Stamp every record of the process with the job name and run id while the run lasts."""
    context = _RunContext(job, run_id)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(context)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(context)


@contextlib.contextmanager
def _sentry(settings: JobSettings, job: str, run_id: str) -> Iterator[Callable[[BaseException], None]]:
    """Yield a function that reports an error to Sentry (a no-op without ``SENTRY_DSN``)."""
    if not settings.sentry_dsn:
        yield lambda error: None
        return
    try:
        import sentry_sdk
    except ImportError as error:
        raise ConfigError(
            ["SENTRY_DSN is set but sentry-sdk is not installed (install healingwork[sentry])"]
        ) from error
    # Only explicit reports: the default integrations would also turn log lines and hooks into events.
    sentry_sdk.init(dsn=settings.sentry_dsn, default_integrations=False, shutdown_timeout=5)
    sentry_sdk.set_tag("job", job)
    sentry_sdk.set_tag("run_id", run_id)

    def report(error: BaseException) -> None:
        sentry_sdk.capture_exception(error)
        sentry_sdk.flush(timeout=5)

    try:
        yield report
    finally:
        sentry_sdk.get_client().close(timeout=5)


def job_metrics(name: str, outcome: JobOutcome) -> CollectorRegistry:
    """The metrics of one run, in a registry of their own (the process's registry is not pushed)."""
    registry = CollectorRegistry()
    Gauge("healingwork_job_duration_seconds", "Duration of the last run", registry=registry).set(outcome.duration_s)
    failed = Gauge("healingwork_job_failed", "1 if the last run failed, else 0", registry=registry)
    failed.set(1 if outcome.status == "failed" else 0)
    if outcome.status == "succeeded":
        Gauge(
            "healingwork_job_last_success_timestamp_seconds", "When the last successful run ended", registry=registry
        ).set_to_current_time()
        items = Gauge(
            "healingwork_job_items", "Items processed or observed by the last run", ["kind"], registry=registry
        )
        for kind, count in outcome.counts.items():
            items.labels(kind).set(count)
    else:
        Gauge(
            "healingwork_job_last_failure_timestamp_seconds", "When the last failed run ended", registry=registry
        ).set_to_current_time()
    return registry


async def push_job_metrics(settings: JobSettings, name: str, outcome: JobOutcome) -> None:
    """Push the run's metrics to the Pushgateway, if one is configured; a push failure is logged only.

    POST (push-add) replaces only the metrics pushed now, so a failed run keeps the last success time
    of the previous successful one: alert on its age.
    """
    if not settings.pushgateway_url or outcome.status == "skipped":
        return
    gateway, registry = settings.pushgateway_url, job_metrics(name, outcome)

    async def push() -> None:
        await asyncio.to_thread(
            pushadd_to_gateway,
            gateway,
            job=f"healingwork-{name}",
            registry=registry,
            timeout=settings.pushgateway_timeout_s,
        )

    try:
        await retry_async(push, retry_on=(OSError,), attempts=3, base_delay_s=0.5, max_delay_s=2.0, what="pushgateway")
    except OSError as error:
        log.error("pushing job metrics failed", extra={"error": repr(error)})
