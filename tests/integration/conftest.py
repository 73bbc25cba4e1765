"""Fixtures shared by the outgoing-webhook tests: a receiver of signed deliveries, and the deliverer's
HTTP client allowed to reach it on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.outgoing_webhooks.safe_http import SafeHttpClient
from tests.support.webhook_receiver import WebhookReceiver, webhook_receiver


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with webhook_receiver() as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[SafeHttpClient]:
    async with SafeHttpClient(allow_private_networks=True, timeout_s=5.0) as running:
        yield running
