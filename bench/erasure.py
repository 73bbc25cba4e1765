"""Erasing one address while the outbox holds many published rows of other leads.

Run: ``uv run python -m bench.erasure`` (an embedded PostgreSQL, or ``DATABASE_URL`` when set; the
benchmark creates and drops its own database). The last output line is one JSON object.

Erasure deletes the person's outbox rows by key and also any row whose payload contains the address
(a sequential scan of the outbox, which is bounded by ``OUTBOX_RETENTION_HOURS``). ``erase_ms_<n>`` is
the median time of ``erase_address`` (rolled back, so each run erases the same data) with ``n``
published outbox rows of other leads; ``scan_ratio`` is the largest over the smallest.

``--smoke`` (bench/smoke.py) fills 1,000 and 5,000 rows, twice each: the keys name those sizes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from bench.scheduler import drop_database, fresh_database, print_measured_on_postgres
from bench.smoke import parse_arguments
from services.common.config import DatabaseSettings
from services.common.db import connect
from services.common.migrate import apply_migrations
from services.intake.erasure import erase_address

SIZES = (10_000, 100_000, 500_000)
RUNS = 5
SMOKE = {"sizes": (1_000, 5_000), "runs": 2}  # --smoke (bench/smoke.py)
HASH_KEY = "0f3a6c9e2b5d8f1a4c7e0b3d6f9a2c5e8b1d4f7a"


async def fill_outbox(url: str, rows: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("TRUNCATE outbox")
        await conn.execute(
            """INSERT INTO outbox (topic, key, payload, published_at)
               SELECT 'email.events', gen_random_uuid()::text,
                      convert_to('{"type":"email.event","id":"' || gen_random_uuid() || '","event":"sent",'
                                 || '"detail":"250 2.0.0 Ok: queued as ' || g || '"}', 'UTF8'), now()
               FROM generate_series(1, %s) AS g""",
            (rows,),
        )
        await conn.execute("VACUUM ANALYZE outbox")


async def erase_timing(url: str, runs: int) -> float:
    conn = await connect(DatabaseSettings(database_url=url, db_statement_timeout_s=600))
    timings = []
    async with conn:
        for _ in range(runs):
            async with conn.transaction(force_rollback=True):
                started = time.perf_counter()
                erased = await erase_address(
                    conn, "erase.me@example.com", hash_key=HASH_KEY, announce_topic="bench.lifecycle.events"
                )
                timings.append(time.perf_counter() - started)
                assert erased == 1, erased
    return statistics.median(timings) * 1000


async def measure(server_url: str, sizes: tuple[int, ...], runs: int) -> dict[str, object]:
    url = fresh_database(server_url)
    try:
        apply_migrations(url)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
                   VALUES (gen_random_uuid(), 'Erase.Me@example.com', 'erase.me@example.com', 'bench', true)"""
            )
        result: dict[str, object] = {"benchmark": "erasure"}
        for size in sizes:
            await fill_outbox(url, size)
            result[f"erase_ms_{size}"] = round(await erase_timing(url, runs), 2)
            print(f"{size} outbox rows: erase in {result[f'erase_ms_{size}']} ms (median of {runs})")
        smallest, largest = result[f"erase_ms_{sizes[0]}"], result[f"erase_ms_{sizes[-1]}"]
        result["scan_ratio"] = round(float(largest) / max(float(smallest), 0.001), 1)  # type: ignore[arg-type]
        return result
    finally:
        drop_database(server_url, url)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.erasure", description=__doc__.split("\n\n")[0])
    parser.set_defaults(sizes=SIZES, runs=RUNS)
    args = parse_arguments(parser, SMOKE)
    print_measured_on_postgres(lambda url: measure(url, args.sizes, args.runs))


if __name__ == "__main__":
    main()
