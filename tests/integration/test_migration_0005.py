"""Migration 0005 on a database that already has leads: old leads count as handled by the scheduler
(so reconciliation never replays history), recent ones stay open to reconciliation."""

from __future__ import annotations

import psycopg
import pytest

from services.common.migrate import apply_migrations, available_migrations

pytestmark = pytest.mark.integration


def test_existing_leads_older_than_a_day_are_marked_handled_recent_ones_are_not(database_url: str) -> None:
    before = [m for m in available_migrations() if m.version < 5]
    with psycopg.connect(database_url, autocommit=True) as conn:
        # The schema as it was before 0005, recorded as applied, with two leads in it.
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in before:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (migration.version, migration.name)
            )
        conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, consent_marketing, created_at) VALUES
               (gen_random_uuid(), 'old@example.com', 'old@example.com', 'website', true, now() - interval '2 days'),
               (gen_random_uuid(), 'new@example.com', 'new@example.com', 'website', true, now() - interval '1 hour')"""
        )

    assert 5 in apply_migrations(database_url)

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT email, enrolled_at = created_at AS handled, enrolled_at IS NULL AS open FROM leads ORDER BY email"
        ).fetchall()
    assert rows == [("new@example.com", None, True), ("old@example.com", True, False)]
