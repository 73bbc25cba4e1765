"""The scheduler's due loop: steps emitted per second, and how the due scan scales with table size.

Run: ``uv run python -m bench.scheduler`` (an embedded PostgreSQL, or ``DATABASE_URL`` when set; the
benchmark creates and drops its own database). The last output line is one JSON object.

* ``due_steps_per_s``: ``emit_due_steps`` draining 20,000 due enrollments in batches of 1,000 (message
  rows, outbox rows and advanced enrollments, committed per batch). In-run baseline: a plain INSERT of
  the same number of message and outbox rows in the same batches (``baseline_rows_per_s``), so the ratio
  says what the scheduler's own logic costs on top of the writes it must do.
* ``scan_ms_10k`` / ``scan_ms_1m``: median time of the claim query (``LIMIT 1000 ... SKIP LOCKED``, rolled
  back) with 1,000 due enrollments among 10,000 and among 1,000,000 rows; ``scan_ratio`` = 1M over 10k.
* ``conditions_due_steps_per_s``: the same drain of 20,000 due enrollments of Sequences with conditions
  on every step (``exitWhen`` and a step ``when`` about ``purchased`` events; each lead has 3 ``sent``
  events and has not purchased, the common case), so every due step reads its lead's facts and
  decides two CEL conditions (issue 16's verdict: at least 10,000 due steps/s);
  ``conditions_vs_plain`` = that over ``due_steps_per_s``.
* ``history_conditions_due_steps_per_s``: the same, with a step ``when`` that reads the 3 ``sent``
  events of every lead (``events.exists(e, e.type == 'sent')``): every lead's events are read,
  converted and evaluated (the worst case); ``history_conditions_vs_plain`` = that over
  ``due_steps_per_s``.
* ``event_wake_ms_10k`` / ``event_wake_ms_1m``: median time of recording one event for a lead (the row
  and the trigger that wakes that lead's reacting enrollments, rolled back) among 10,000 and 1,000,000
  enrollments, 1% of them of reacting Sequences; ``wake_ratio`` = 1M over 10k (flat: indexed by lead).

``--smoke`` (bench/smoke.py) drains 2,000 and scans 2,000 and 4,000 enrollments instead: seconds, not
minutes; the keys keep their names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.smoke import parse_arguments
from devstack.embedded import EmbeddedPostgres
from services.common.config import DatabaseSettings
from services.common.db import connect
from services.common.migrate import apply_migrations
from services.common.sequences import apply_sequence, parse_sequence_document
from services.scheduler.due import CLAIM_DUE, emit_due_steps

NOW = datetime(2026, 1, 14, 10, 0, tzinfo=UTC)
DUE_FOR_THROUGHPUT = 20_000
DUE_FOR_SCAN = 1_000
BATCH = 1_000
SEQUENCES = 10


@dataclass(frozen=True)
class Sizes:
    """How many due enrollments each drain empties, and the two table sizes the scans run among."""

    due: int = DUE_FOR_THROUGHPUT
    scan_small: int = 10_000
    scan_large: int = 1_000_000


SMOKE = {"sizes": Sizes(due=2_000, scan_small=2_000, scan_large=4_000)}  # --smoke (bench/smoke.py)


PLAIN, REACTING, READING_HISTORY = "bench", "bench-c", "bench-h"
NOT_PURCHASED = "!events.exists(e, e.type == 'purchased')"
# True for every lead of the bench (each has 3 `sent` events), and reads all of them.
HAS_BEEN_SENT = "events.exists(e, e.type == 'sent')"


def sequence_document(index: int, prefix: str = PLAIN) -> dict[str, object]:
    conditions = prefix in (REACTING, READING_HISTORY)
    first_when = HAS_BEEN_SENT if prefix == READING_HISTORY else NOT_PURCHASED
    document: dict[str, object] = {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": f"{prefix}-{index}"},
        "spec": {
            "trigger": {"sources": [f"{prefix}-{index}"]},
            "steps": [
                {"name": "first", "delay": "0s", "subject": "One", "text": "1"}
                | ({"when": first_when} if conditions else {}),
                {"name": "second", "delay": "2d", "subject": "Two", "text": "2"}
                | ({"when": "events.exists(e, e.type == 'sent' && e.step == 'first')"} if conditions else {}),
            ],
        }
        | ({"exitWhen": "events.exists(e, e.type == 'purchased')"} if conditions else {}),
    }
    return document


async def prepare(url: str) -> None:
    conn = await connect(DatabaseSettings(database_url=url, db_statement_timeout_s=600))
    async with conn, conn.transaction():
        for prefix in (PLAIN, REACTING, READING_HISTORY):
            for index in range(SEQUENCES):
                await apply_sequence(conn, parse_sequence_document(sequence_document(index, prefix), "bench"))


async def add_enrollments(url: str, count: int, *, due: bool, prefix: str = PLAIN) -> None:
    """``count`` enrollments spread over the Sequences: due now, or active and due in the future."""
    per_sequence = count // SEQUENCES
    conn = await connect(DatabaseSettings(database_url=url, db_statement_timeout_s=600))
    async with conn:
        for index in range(SEQUENCES):
            async with conn.transaction():
                await conn.execute(
                    """WITH new_leads AS (
                           INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
                           SELECT id, id || '@example.com', id || '@example.com', %(source)s, true
                           FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, %(n)s)) g
                           RETURNING id)
                       INSERT INTO enrollments (id, lead_id, sequence_id, revision, next_step, next_run_at, status)
                       SELECT gen_random_uuid(), l.id, s.id, 1, 0,
                              CASE WHEN %(due)s THEN %(now)s - random() * interval '1 hour'
                                   ELSE %(now)s + interval '1 hour' + random() * interval '30 days' END,
                              'active'
                       FROM new_leads l, sequences s WHERE s.name = %(name)s""",
                    {
                        "source": f"{prefix}-{index}",
                        "n": per_sequence,
                        "due": due,
                        "now": NOW,
                        "name": f"{prefix}-{index}",
                    },
                )
        await conn.execute("ANALYZE")


async def drain(url: str) -> tuple[int, float]:
    conn = await connect(DatabaseSettings(database_url=url, db_statement_timeout_s=600))
    emitted = 0
    async with conn:
        started = time.perf_counter()
        while True:
            async with conn.transaction():
                batch = await emit_due_steps(conn, limit=BATCH, topic="email.dispatch", now=NOW)
            emitted += len(batch)
            if len(batch) < BATCH:
                break
        return emitted, time.perf_counter() - started


async def add_history(url: str, per_lead: int) -> None:
    """``per_lead`` events for every lead (type ``viewed``, which conditions read like any other)."""
    conn = await connect(DatabaseSettings(database_url=url, db_statement_timeout_s=600))
    async with conn, conn.transaction():
        await conn.execute(
            """INSERT INTO events (lead_id, type, occurred_at)
               SELECT l.id, 'sent', %s - make_interval(mins => g) FROM leads l, generate_series(1, %s) g""",
            (NOW, per_lead),
        )
        await conn.execute("ANALYZE events")


async def event_wake_ms(url: str, repeats: int = 100) -> float:
    """Median time of recording one event (which wakes its lead's reacting enrollments), rolled back."""
    conn = await connect(DatabaseSettings(database_url=url, db_statement_timeout_s=600))
    timings = []
    async with conn:
        cursor = await conn.execute(
            """SELECT e.lead_id FROM enrollments e JOIN sequences s ON s.id = e.sequence_id
               WHERE s.name LIKE 'bench-c-%%' ORDER BY random() LIMIT %s""",
            (repeats,),
        )
        leads = [row["lead_id"] for row in await cursor.fetchall()]
        for lead in leads:
            async with conn.transaction():
                started = time.perf_counter()
                woken = await conn.execute(
                    "INSERT INTO events (lead_id, type) VALUES (%s, 'purchased')",
                    (lead,),
                )
                timings.append((time.perf_counter() - started) * 1000)
                assert woken.rowcount == 1
                raise psycopg.Rollback()
    return statistics.median(timings)


async def baseline_inserts(url: str, rows: int) -> float:
    """Plain inserts of ``rows`` message-sized and outbox-sized rows into scratch tables, in batches."""
    conn = await connect(DatabaseSettings(database_url=url, db_statement_timeout_s=600))
    async with conn:
        # The same columns, defaults, identity and indexes as the real tables; no foreign keys.
        await conn.execute("CREATE TABLE scratch_messages (LIKE messages INCLUDING ALL)")
        await conn.execute("CREATE TABLE scratch_outbox (LIKE outbox INCLUDING ALL)")
        payload = b"x" * 220
        started = time.perf_counter()
        for _ in range(rows // BATCH):
            ids = [uuid.uuid4() for _ in range(BATCH)]
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO scratch_messages
                           (id, enrollment_id, lead_id, sequence_id, revision, step_position, status)
                       SELECT i, i, i, i, 1, 0, 'queued' FROM unnest(%s::uuid[]) AS i""",
                    (ids,),
                )
                await conn.execute(
                    """INSERT INTO scratch_outbox (topic, key, payload)
                       SELECT 'email.dispatch', k::text, %s FROM unnest(%s::uuid[]) AS k""",
                    (payload, ids),
                )
        return time.perf_counter() - started


async def scan_ms(url: str, repeats: int = 30) -> float:
    conn = await connect(DatabaseSettings(database_url=url, db_statement_timeout_s=600))
    timings = []
    async with conn:
        for _ in range(repeats):
            async with conn.transaction():
                started = time.perf_counter()
                cursor = await conn.execute(CLAIM_DUE, {"now": NOW, "limit": BATCH})
                rows = await cursor.fetchall()
                timings.append((time.perf_counter() - started) * 1000)
                assert len(rows) == DUE_FOR_SCAN, len(rows)
                raise psycopg.Rollback()
    return statistics.median(timings)


def fresh_database(server_url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def drop_database(server_url: str, url: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(url.rpartition("/")[2])))


async def measure(server_url: str, sizes: Sizes) -> dict[str, object]:
    url = fresh_database(server_url)
    try:
        apply_migrations(url)
        await prepare(url)

        await add_enrollments(url, sizes.due, due=True)
        emitted, seconds = await drain(url)
        assert emitted == sizes.due, emitted
        baseline_seconds = await baseline_inserts(url, sizes.due)
        print(f"emitted {emitted} due steps in {seconds:.2f} s; plain inserts took {baseline_seconds:.2f} s")

        # The drained enrollments now wait two days for their second step: not due, still active.
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("DELETE FROM outbox")
            await conn.execute("DELETE FROM messages")
            await conn.execute("DELETE FROM enrollments")
            await conn.execute("DELETE FROM leads")
            await conn.execute("VACUUM ANALYZE")
        conditions: dict[str, float] = {}
        for prefix in (REACTING, READING_HISTORY):
            await add_enrollments(url, sizes.due, due=True, prefix=prefix)
            await add_history(url, 3)
            emitted_c, seconds_c = await drain(url)
            assert emitted_c == sizes.due, emitted_c
            conditions[prefix] = emitted_c / seconds_c
            print(f"emitted {emitted_c} due steps with conditions ({prefix}) in {seconds_c:.2f} s")
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                for table in ("events", "outbox", "messages", "enrollments", "leads"):
                    await conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
                await conn.execute("VACUUM ANALYZE")

        small, large = sizes.scan_small, sizes.scan_large
        reacting_small, reacting_large = small // 100, large // 100
        await add_enrollments(url, DUE_FOR_SCAN, due=True)
        await add_enrollments(url, small - DUE_FOR_SCAN - reacting_small, due=False)
        await add_enrollments(url, reacting_small, due=False, prefix=REACTING)
        scan_10k = await scan_ms(url)
        wake_10k = await event_wake_ms(url)
        print(f"due scan with {small:,} enrollments: {scan_10k:.2f} ms; one event's wake-up {wake_10k:.2f} ms")
        await add_enrollments(url, large - small - (reacting_large - reacting_small), due=False)
        await add_enrollments(url, reacting_large - reacting_small, due=False, prefix=REACTING)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("VACUUM ANALYZE enrollments")
        scan_1m = await scan_ms(url)
        wake_1m = await event_wake_ms(url)
        print(f"due scan with {large:,} enrollments: {scan_1m:.2f} ms; one event's wake-up {wake_1m:.2f} ms")
    finally:
        drop_database(server_url, url)
    return {
        "due_steps_per_s": round(emitted / seconds),
        "baseline_rows_per_s": round(sizes.due / baseline_seconds),
        "due_vs_baseline": round((emitted / seconds) / (sizes.due / baseline_seconds), 3),
        "scan_ms_10k": round(scan_10k, 3),
        "scan_ms_1m": round(scan_1m, 3),
        "scan_ratio": round(scan_1m / scan_10k, 3),
        "conditions_due_steps_per_s": round(conditions[REACTING]),
        "conditions_vs_plain": round(conditions[REACTING] / (emitted / seconds), 3),
        "history_conditions_due_steps_per_s": round(conditions[READING_HISTORY]),
        "history_conditions_vs_plain": round(conditions[READING_HISTORY] / (emitted / seconds), 3),
        "event_wake_ms_10k": round(wake_10k, 3),
        "event_wake_ms_1m": round(wake_1m, 3),
        "wake_ratio": round(wake_1m / wake_10k, 3),
        "batch": BATCH,
        "cpus": os.cpu_count(),
    }


def print_measured_on_postgres(measure: Callable[[str], Coroutine[Any, Any, dict[str, Any]]]) -> None:
    """Run ``measure`` against the PostgreSQL server of ``DATABASE_URL``, else an embedded one started
    for the run, and print its result as the one JSON line a benchmark ends with."""
    server_url = os.environ.get("DATABASE_URL")
    if server_url:
        result = asyncio.run(measure(server_url))
    else:
        with tempfile.TemporaryDirectory() as folder:
            server = EmbeddedPostgres(Path(folder) / "data")
            server.start()
            try:
                result = asyncio.run(measure(server.url))
            finally:
                server.stop()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler", description=__doc__.split("\n\n")[0])
    parser.set_defaults(sizes=Sizes())
    args = parse_arguments(parser, SMOKE)
    print_measured_on_postgres(lambda url: measure(url, args.sizes))


if __name__ == "__main__":
    main()
