"""The intake API under test: served over real HTTP with real credentials.

``create_api_client`` stores a client in the test database and returns its key; ``Intake`` bundles a
running intake's settings, base URL and an httpx client that authenticates with such a key.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from services.common.config import DatabaseSettings, IntakeSettings, signing_key_entries
from services.common.db import connect
from services.common.signatures import canonical_request, request_signature
from services.intake.clients import ApiClient, create_client, signing_secret
from tests.support.platform import free_port, make_settings, serve_intake

ALL_SCOPES = ["leads:write", "leads:read", "admin"]


async def create_api_client(database_url: str, name: str, scopes: list[str]) -> tuple[ApiClient, str]:
    """A new API client in ``database_url``; returns it and its key."""
    conn = await connect(DatabaseSettings(database_url=database_url))
    async with conn:
        return await create_client(conn, name, scopes)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sign(
    settings: IntakeSettings,
    client_id: uuid.UUID,
    body: bytes,
    at: float | None = None,
    *,
    method: str = "POST",
    path: str = "/v1/leads",
    query: str = "",
    nonce: str | None = None,
    key_id: str | None = None,
) -> dict[str, str]:
    """Headers of a request signed (scheme v2) as client ``client_id`` at unix time ``at`` (default: now)
    with a fresh nonce (unless given) under the current key of ``REQUEST_SIGNING_KEYS`` (or ``key_id``)."""
    keys = signing_key_entries(settings.request_signing_keys)
    key_id = key_id or keys[0][0]
    timestamp, nonce = str(int(time.time() if at is None else at)), nonce or uuid.uuid4().hex
    canonical = canonical_request(
        method=method,
        path=path,
        query=query,
        body=body,
        timestamp=timestamp,
        nonce=nonce,
        client_id=str(client_id),
        key_id=key_id,
    )
    signature = request_signature(signing_secret(dict(keys)[key_id], client_id), canonical)
    return {
        "X-Client-Id": str(client_id),
        "X-Signature": f"keyid={key_id},t={timestamp},nonce={nonce},v2={signature}",
        "Content-Type": "application/json",
    }


@dataclass
class Intake:
    """A running intake: its settings, base URL, an all-scopes client (``http``) and that client's key."""

    settings: IntakeSettings
    base_url: str
    http: httpx.AsyncClient
    key: str
    client: ApiClient

    @property
    def metrics_url(self) -> str:
        """Where this intake serves /metrics: its HEALTH_PORT, never the API's port."""
        return f"http://127.0.0.1:{self.settings.health_port}/metrics"

    def anonymous(self, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client without credentials (close it, or use it in ``async with``)."""
        return httpx.AsyncClient(base_url=self.base_url, timeout=30, **kwargs)


@contextlib.asynccontextmanager
async def running_intake(
    database_url: str, bootstrap: str, prefix: str, *, scopes: list[str] | None = None, **overrides: Any
) -> AsyncIterator[Intake]:
    """Serve intake on a free port with ``overrides`` applied to its settings; yield it with a client
    holding ``scopes`` (default: every scope)."""
    settings = make_settings(
        IntakeSettings, database_url, bootstrap, prefix, **{"health_port": free_port(), **overrides}
    )
    client, key = await create_api_client(database_url, f"tests-{uuid.uuid4().hex[:8]}", scopes or ALL_SCOPES)
    async with (
        serve_intake(settings) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30, headers=bearer(key)) as http,
    ):
        yield Intake(settings=settings, base_url=base_url, http=http, key=key, client=client)
