"""The one clock. Business logic takes "now" from the database transaction (``now()``) where it can,
so every replica agrees; this is for process-local timing."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)
