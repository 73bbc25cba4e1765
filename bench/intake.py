"""Benchmark: durable accepted leads per second, against an in-run baseline.

    uv run python -m bench.intake [--concurrency 32] [--seconds 8]

Starts an embedded PostgreSQL and broker, serves intake (``bench.intake_server``: the real app plus
``POST /bench/validate``, which only validates the same body) in its own process, and drives it
over HTTP from this process:

1. ``validate_only_per_s``: the baseline, closed loop at the given concurrency;
2. ``accepted_per_s``: ``POST /v1/leads`` with unique emails and an API key, closed loop, same
   concurrency; every 202 is checked to be a committed lead (durable: synchronous commit, fsync on);
3. p50/p99 latency at half the accepted rate, open loop (requests are sent on a fixed schedule and
   latency counts from the scheduled time, so a stall is not hidden by the generator waiting).

The last line of output is one JSON object. Nothing here is a test: figures go to docs/performance.md.
``--smoke`` (bench/smoke.py): the sizes of ``SMOKE`` for the options not given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import psycopg

from bench.smoke import parse_arguments
from devstack.embedded import EmbeddedBroker, EmbeddedPostgres, find_free_port
from services.common.migrate import apply_migrations
from tests.support.intake import create_api_client

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {"concurrency": 4, "seconds": 1.0}  # --smoke (bench/smoke.py)


def lead_body(run: str, n: int) -> bytes:
    return json.dumps(
        {
            "email": f"lead-{run}-{n}@example.com",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "phone": "+44 20 7183 8750",
            "source": "website",
            "tags": ["newsletter"],
            "consent": {"marketing": True, "text": "Yes, send me the newsletter."},
            "utm": {"source": "google", "medium": "cpc", "campaign": "spring"},
            "locale": "en-GB",
            "timezone": "Europe/London",
        }
    ).encode()


async def closed_loop(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], concurrency: int, seconds: float, run: str
) -> tuple[int, float, list[float]]:
    """``concurrency`` workers posting back to back for ``seconds``; returns (2xx count, elapsed, latencies)."""
    counter = iter(range(10**9))
    latencies: list[float] = []
    ok = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal ok
        while time.perf_counter() < deadline:
            body = lead_body(run, next(counter))
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status == 202:
                    ok += 1
                else:
                    raise RuntimeError(f"{url} answered {response.status}: {await response.text()}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, time.perf_counter() - started, latencies


async def open_loop(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], rate: float, seconds: float, run: str
) -> list[float]:
    """Requests sent every ``1/rate`` s for ``seconds``; latency counted from each scheduled send time."""
    latencies: list[float] = []
    count = int(rate * seconds)
    start = time.perf_counter() + 0.05

    async def one(n: int) -> None:
        scheduled = start + n / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        async with session.post(url, data=lead_body(run, n), headers=headers) as response:
            await response.read()
            if response.status != 202:
                raise RuntimeError(f"{url} answered {response.status}")
        latencies.append(time.perf_counter() - scheduled)

    await asyncio.gather(*(one(n) for n in range(count)))
    return latencies


async def wait_for_relay(database_url: str) -> float:
    """Seconds until every outbox row is published (the relay keeps up again); at most two minutes."""
    started = time.perf_counter()
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    async with conn, asyncio.timeout(120):
        while True:
            cursor = await conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            row = await cursor.fetchone()
            if row is not None and row[0] == 0:
                return time.perf_counter() - started
            await asyncio.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else values[0]


async def measure(base_url: str, key: str, database_url: str, concurrency: int, seconds: float) -> dict[str, object]:
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    plain = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base_url, connector=connector) as session:
        # Warm-up: connections, caches, the JIT-less interpreter's first-call costs.
        warm_up = min(1.0, seconds)
        await closed_loop(session, "/bench/validate", plain, concurrency, warm_up, "warm")
        await closed_loop(session, "/v1/leads", auth, concurrency, warm_up, "warm")

        validated, elapsed, _ = await closed_loop(session, "/bench/validate", plain, concurrency, seconds, "v")
        validate_only_per_s = validated / elapsed
        print(f"validate only: {validated} in {elapsed:.1f} s = {validate_only_per_s:.0f}/s", flush=True)

        accepted, elapsed, full_load = await closed_loop(session, "/v1/leads", auth, concurrency, seconds, "a")
        accepted_per_s = accepted / elapsed
        print(f"accepted:      {accepted} in {elapsed:.1f} s = {accepted_per_s:.0f}/s", flush=True)

        # At full load the relay falls behind; measure the half load in steady state, after it caught up.
        drain_s = await wait_for_relay(database_url)
        print(f"outbox relay caught up in {drain_s:.1f} s", flush=True)

        half = accepted_per_s / 2
        latencies = await open_loop(session, "/v1/leads", auth, half, seconds, "h")
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM leads WHERE email LIKE 'lead-a-%%'").fetchone()
    durable = int(row[0]) if row else 0
    if durable != accepted:
        raise RuntimeError(f"{accepted} leads were answered 202 but {durable} are stored")
    result = {
        "accepted_per_s": round(accepted_per_s, 1),
        "validate_only_per_s": round(validate_only_per_s, 1),
        "ratio": round(accepted_per_s / validate_only_per_s, 3),
        "p50_ms_at_half_load": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms_at_half_load": round(percentile(latencies, 0.99) * 1000, 2),
        "p50_ms_at_full_load": round(percentile(full_load, 0.50) * 1000, 2),
        "p99_ms_at_full_load": round(percentile(full_load, 0.99) * 1000, 2),
        "half_load_per_s": round(half, 1),
        "relay_catch_up_s": round(drain_s, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "concurrency": concurrency,
        "seconds": seconds,
        "durable_leads_checked": durable,
        "cpus": os.cpu_count(),
    }
    print(
        f"at half load ({half:.0f}/s): p50 {result['p50_ms_at_half_load']} ms, p99 {result['p99_ms_at_half_load']} ms",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parse_arguments(parser, SMOKE)

    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "pg")
        broker = EmbeddedBroker()
        postgres.start()
        broker.start()
        server: subprocess.Popen[bytes] | None = None
        try:
            with psycopg.connect(postgres.url, autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            database_url = postgres.url_for("bench")
            apply_migrations(database_url)
            _, key = asyncio.run(create_api_client(database_url, "bench", ["leads:write"]))
            port = find_free_port()
            env = {
                **os.environ,
                "DATABASE_URL": database_url,
                "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "KAFKA_PARTITIONS": "3",
                "HMAC_SECRET": secrets.token_hex(32),
                "SUPPRESSION_HASH_KEY": secrets.token_hex(32),
                "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "RATE_LIMIT_PER_MINUTE": str(10**9),
                "FORM_RATE_LIMIT_PER_MINUTE": str(10**9),
                "LOG_LEVEL": "WARNING",
                "TOPIC_LEADS_ACCEPTED": f"bench-{uuid.uuid4().hex[:6]}.leads.accepted",
            }
            server = subprocess.Popen(
                [sys.executable, "-m", "bench.intake_server"], env=env, cwd=ROOT, stdin=subprocess.DEVNULL
            )
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    raise RuntimeError("the intake server exited")
                try:
                    with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as response:  # noqa: S310
                        if response.status == 200:
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            result = asyncio.run(measure(base_url, key, database_url, args.concurrency, args.seconds))
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
            broker.stop()
            postgres.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
