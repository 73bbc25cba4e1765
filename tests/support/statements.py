"""Counting the statements a connection sends to PostgreSQL, from libpq's own protocol trace.

Every statement reaches the server as a simple-protocol ``Query`` or an extended-protocol ``Bind``
(psycopg sends ``Parse`` only until a statement is prepared, ``Bind`` every time), so counting the
frontend's ``Query`` and ``Bind`` messages counts what the server ran, whatever code sent it. The
pool's liveness check (an empty ``Query``, sent or skipped by the time since the last one) is not
counted: it is the pool's, not the caller's.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from services.common.db import Connection

# A trace line: [timestamp] TAB direction TAB length TAB message type TAB its fields (a query's text quoted).
_STATEMENT = re.compile(r'^[^\t]*\tF\t\d+\t(?:Bind\t|Query\t(?!\s*""\s*$))', re.MULTILINE)


@dataclass
class StatementCount:
    """The statements sent while the ``counting_statements`` block ran (set when it ends)."""

    value: int = 0


@contextmanager
def counting_statements(conn: Connection) -> Iterator[StatementCount]:
    """Count the statements ``conn`` sends inside the block (with a pool, trace its one connection)."""
    count = StatementCount()
    with tempfile.TemporaryFile() as trace:
        conn.pgconn.trace(trace.fileno())
        try:
            yield count
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        count.value = len(_STATEMENT.findall(trace.read().decode(errors="replace")))
