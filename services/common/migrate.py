"""Schema migrations: numbered SQL files applied in order, each in its own transaction.

Safe when several run at once (a Helm hook Job racing a developer, two replicas starting): a session
advisory lock serializes them, and each file is applied only if ``schema_migrations`` lacks it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

# Arbitrary but fixed: every healingwork migrator takes the same lock.
MIGRATION_LOCK_KEY = 0x6865616C696E67  # "healing"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """The migrations shipped with this version, in order."""
    folder = resources.files("services.common") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def apply_migrations(database_url: str, *, connect_timeout_s: int = 10, lock_timeout_s: int = 300) -> list[int]:
    """Bring the schema up to date; returns the versions this call applied (empty when up to date)."""
    applied_now: list[int] = []
    with psycopg.connect(database_url, autocommit=True, connect_timeout=connect_timeout_s) as conn:
        conn.execute(f"SET lock_timeout = '{int(lock_timeout_s)}s'")
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in available_migrations():
                if migration.version in done:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                log.info("applied migration", extra={"version": migration.version, "migration": migration.name})
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now
