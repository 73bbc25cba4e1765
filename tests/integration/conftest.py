"""Fixtures shared by the outgoing-webhook tests: an intake that registers endpoints on loopback, a
receiver of signed deliveries, and the deliverer's HTTP client allowed to reach it. A module needing an
intake with other settings defines its own ``intake``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.outgoing_webhooks.safe_http import SafeHttpClient
from tests.support.intake import Intake, running_intake
from tests.support.webhook_receiver import WebhookReceiver, webhook_receiver


@pytest.fixture
async def intake(migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[Intake]:
    async with running_intake(
        migrated_database_url, kafka_bootstrap_servers, topic_prefix, webhook_allow_private_networks=True
    ) as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with webhook_receiver() as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[SafeHttpClient]:
    async with SafeHttpClient(allow_private_networks=True, timeout_s=5.0) as running:
        yield running
