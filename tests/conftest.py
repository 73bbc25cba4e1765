from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg_pool
import pytest

from services.common.config import DatabaseSettings
from services.common.db import Connection, open_pool
from services.common.migrate import apply_migrations

pytest_plugins = ["tests.support.services", "tests.support.browser"]


@pytest.fixture
def migrated_database_url(database_url: str) -> str:
    """A fresh database with the current schema."""
    apply_migrations(database_url)
    return database_url


@pytest.fixture
def topic_prefix() -> str:
    """Topic names private to one test, so tests share one broker safely."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
async def pool(migrated_database_url: str) -> AsyncIterator[psycopg_pool.AsyncConnectionPool[Connection]]:
    """A connection pool on a fresh database with the current schema (a module needing other pool settings
    or seeded data defines its own ``pool``)."""
    opened = await open_pool(DatabaseSettings(database_url=migrated_database_url))
    yield opened
    await opened.close()
