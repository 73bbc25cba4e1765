"""The one clock: every wall-clock reading of the services and the operator goes through here.

* :func:`database_now` — the time of the current transaction on the PostgreSQL server. Business logic
  that schedules or compares times across replicas uses it (or ``now()`` in SQL), so every replica
  agrees whatever its own clock says.
* :func:`utcnow` and :func:`unix_now` — this process's wall clock, for timestamps written into
  messages and for checking the timestamps of signed requests.

Durations and timeouts are not wall-clock readings: they use ``time.monotonic()`` (or the event
loop's ``loop.time()``, ``time.perf_counter()``) directly, which never jumps when NTP corrects the
clock. Code that tests need to steer takes ``now`` as a parameter (or a ``Clock``) defaulting to these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from services.common.db import Connection

# A source of Unix time in seconds, injectable where a test fixes "now".
Clock = Callable[[], float]


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def unix_now() -> float:
    """The current Unix time in seconds."""
    return time.time()


async def database_now(conn: Connection) -> datetime:
    """The transaction's time on the database server: one clock for every replica."""
    cursor = await conn.execute("SELECT now() AS now")
    row = await cursor.fetchone()
    assert row is not None
    now: datetime = row["now"]  # type: ignore[assignment]
    return now
