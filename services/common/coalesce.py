"""Group commit: many concurrent callers, one database transaction per group.

Each SMTP send needs a claim before and a record after it. Done one by one, those transactions cost
more than the sends; a :class:`Coalescer` runs whatever calls arrived while the previous group was in
the database as one group, so under load a group holds roughly the number of sends in flight, and
when idle a call goes alone without waiting. Each caller still waits for its own item's result, so
nothing is acknowledged before it is committed.

Groups run one at a time, so a busy coalescer can keep one database connection for as long as it
has work: ``on_idle`` runs whenever the queue empties (the dispatcher returns its connection to the
pool there), which saves the pool's checkout and liveness check on every group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - item
R = TypeVar("R")


class Coalescer(Generic[I, R]):
    """Runs ``flush(items)`` for groups of submitted items; ``flush`` returns one result per item."""

    def __init__(
        self,
        flush: Callable[[Sequence[I]], Awaitable[Sequence[R]]],
        *,
        max_items: int = 256,
        on_idle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._flush = flush
        self._max_items = max_items
        self._on_idle = on_idle
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._running: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> R:
        """The result of ``item``'s group flush (its exception, if the flush raised)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            while self._pending:
                group, self._pending = self._pending[: self._max_items], self._pending[self._max_items :]
                try:
                    results = await self._flush([item for item, _ in group])
                except BaseException as error:  # every caller of the group learns of the failure
                    for _, future in group:
                        if not future.done():
                            future.set_exception(error)
                    if isinstance(error, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), result in zip(group, results, strict=True):
                    if not future.done():
                        future.set_result(result)
            if self._on_idle is not None:
                await self._on_idle()  # items submitted meanwhile are taken by the outer loop
