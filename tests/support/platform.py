"""Building the platform's pieces for tests: settings pointing at the test servers, a migrated
database, the intake served over real HTTP by uvicorn, and a running scheduler and dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import uvicorn

from devstack.mailsink import MailSink
from services.common.config import (
    BusSettings,
    DatabaseSettings,
    IntakeSettings,
)
from services.common.db import connect
from services.common.sequences import apply_sequence_files
from services.intake.app import create_app

EXAMPLES = Path(__file__).resolve().parents[2] / "k8s" / "examples"
FROM_EMAIL = "team@example.com"
FROM_NAME = "Healingwork Tests"

S = TypeVar("S", bound=BusSettings)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def topics_for(prefix: str) -> dict[str, Any]:
    """Topic names private to one test, so tests can share a broker."""
    return {
        "topic_leads_accepted": f"{prefix}leads.accepted",
        "topic_email_dispatch": f"{prefix}email.dispatch",
        "topic_email_events": f"{prefix}email.events",
        "topic_email_dlq": f"{prefix}email.dispatch.dlq",
        "topic_leads_suppressed": f"{prefix}leads.suppressed",
        "topic_lifecycle_events": f"{prefix}lifecycle.events",
        "kafka_group_prefix": prefix,
    }


def make_settings(kind: type[S], database_url: str, bootstrap: str, prefix: str, **overrides: Any) -> S:
    """Settings of ``kind`` for tests: fast polling, short Kafka session timeouts, private topics."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "kafka_bootstrap_servers": bootstrap,
        "kafka_partitions": 2,
        "kafka_session_timeout_s": 2.0,
        "outbox_poll_interval_s": 0.2,
        "health_port": 0,
        "hmac_secret": secrets.token_hex(32),
        "suppression_hash_key": secrets.token_hex(32),
        "request_signing_keys": f"test-key:{secrets.token_hex(32)}",
        "public_base_url": "http://127.0.0.1:8000",
        "from_email": FROM_EMAIL,
        "from_name": FROM_NAME,
        "smtp_url": "smtp://127.0.0.1:25?starttls=never",
        "scheduler_poll_interval_s": 0.2,
        **topics_for(prefix),
        **overrides,
    }
    fields = {f.name for f in msgspec.structs.fields(kind)}
    return msgspec.convert({k: v for k, v in values.items() if k in fields}, kind)


def smtp_url_of(sink: MailSink) -> str:
    return f"smtp://{sink.host}:{sink.port}?starttls=never"


async def apply_examples(database_url: str) -> None:
    await apply_sequence_files(DatabaseSettings(database_url=database_url), [EXAMPLES])


async def fetch_all(database_url: str, query: str, *params: object) -> list[dict[str, object]]:
    conn = await connect(DatabaseSettings(database_url=database_url))
    async with conn:
        cursor = await conn.execute(query.encode(), params or None)
        return await cursor.fetchall()


@contextlib.asynccontextmanager
async def serve_intake(settings: IntakeSettings, **app_options: Any) -> AsyncIterator[str]:
    """The intake app served by uvicorn on a free port; yields its base URL."""
    port = free_port()
    # As `healingwork intake` runs it: the client IP is resolved by intake (TRUSTED_PROXIES), not uvicorn.
    config = uvicorn.Config(
        create_app(settings, **app_options),
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def running(run: Callable[..., Awaitable[None]], settings: BusSettings) -> AsyncIterator[None]:
    """Run a service entrypoint (``run_scheduler``/``run_dispatcher``) in this loop for the block."""
    task = asyncio.create_task(run(settings, handle_signals=False))
    try:
        yield
        if task.done():
            task.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test with ``what`` after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.1)
