from __future__ import annotations

import uuid

import pytest

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
