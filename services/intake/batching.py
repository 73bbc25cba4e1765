"""Group commit: concurrent lead submissions share transactions, so one commit (one WAL flush) makes
many leads durable.

Nothing waits for a batch to fill: a submission starts a batch at once when fewer than
``max_concurrent`` batches are running; otherwise it joins the queue, and the next batch takes
everything queued (up to ``max_size``). At low load each lead commits alone, as before; under load
the batches grow by themselves. Every submitter gets its answer only after its batch committed.

A failure inside a batch (a constraint, a deadlock, a lost connection) rolls the batch back; each of
its leads is then retried alone, so one bad lead never fails its neighbours. Leads are processed in
the order of their address key, so concurrent batches lock identity rows in one order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import psycopg_pool
from prometheus_client import Histogram

from services.common.db import Connection, transaction

log = logging.getLogger(__name__)

BATCH_SIZE = Histogram(
    "healingwork_lead_batch_size",
    "Leads committed per transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

J = TypeVar("J")
R = TypeVar("R")


class Rejected(Exception):
    """Raised by a batch's work function for a job it refuses without touching the database; the
    batch goes on and only that job's submitter gets the error (wrapped in ``error``)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class _Pending(Generic[J, R]):
    job: J
    order: str
    future: asyncio.Future[R] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommitter(Generic[J, R]):
    """Runs ``work(conn, job)`` for submitted jobs, many per transaction; see the module docstring."""

    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Connection],
        work: Callable[[Connection, J], Awaitable[R]],
        *,
        max_size: int,
        max_concurrent: int,
    ) -> None:
        self._pool = pool
        self._work = work
        self._max_size = max_size
        self._max_concurrent = max_concurrent
        self._queue: list[_Pending[J, R]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, job: J, order: str) -> R:
        """Run ``job`` in some transaction and return its result once that transaction committed."""
        pending: _Pending[J, R] = _Pending(job, order)
        self._queue.append(pending)
        if self._running < self._max_concurrent:
            self._running += 1
            task = asyncio.create_task(self._drain(), name="lead-group-commit")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # The batch's outcome is the caller's: shield it so a client hanging up cannot cancel the batch.
        return await asyncio.shield(pending.future)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max_size], self._queue[self._max_size :]
                batch.sort(key=lambda p: p.order)
                await self._commit(batch)
        finally:
            self._running -= 1

    async def _commit(self, batch: list[_Pending[J, R]]) -> None:
        outcomes: list[R | Exception] = []
        try:
            async with transaction(self._pool) as conn:
                for pending in batch:
                    try:
                        outcomes.append(await self._work(conn, pending.job))
                    except Rejected as rejected:
                        outcomes.append(rejected.error)
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0], error)
                return
            log.warning("group commit failed; retrying its leads one by one", extra={"error": repr(error)})
            for pending in batch:
                await self._commit([pending])
            return
        BATCH_SIZE.observe(len(batch))
        for pending, outcome in zip(batch, outcomes, strict=True):
            _settle(pending, outcome)


def _settle(pending: _Pending[J, R], outcome: R | Exception) -> None:
    if pending.future.done():
        return
    if isinstance(outcome, Exception):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)
