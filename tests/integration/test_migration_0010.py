"""Migration 0010 on a database written by an earlier release: stored texts lose their addresses and
click URLs their queries; existing hashes are marked unkeyed for intake's rehash."""

from __future__ import annotations

import hashlib

import psycopg
import pytest

from services.common.migrate import apply_migrations, available_migrations

pytestmark = pytest.mark.integration


def test_existing_texts_are_redacted_and_existing_hashes_marked_unkeyed(database_url: str) -> None:
    before = [m for m in available_migrations() if m.version < 10]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in before:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (migration.version, migration.name)
            )
        lead = conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
               VALUES (gen_random_uuid(), 'Jane@example.com', 'jane@example.com', 'website', true) RETURNING id"""
        ).fetchone()
        assert lead is not None
        conn.execute(
            """INSERT INTO events (lead_id, type, detail) VALUES
               (%(lead)s, 'bounced', '550 5.1.1 <Jane@example.com>: Recipient address rejected'),
               (%(lead)s, 'clicked', 'https://shop.example.com/offer?email=jane%%40example.com#top'),
               (%(lead)s, 'opened', '')""",
            {"lead": lead[0]},
        )
        conn.execute(
            """INSERT INTO suppressions (email_hash, reason, detail) VALUES
               (%s, 'bounced', 'ses: smtp; 550 jane@example.com... no such user'),
               (%s, 'erased', 'old detail')""",
            (hashlib.sha256(b"jane@example.com").hexdigest(), hashlib.sha256(b"gone@example.com").hexdigest()),
        )

    assert 10 in apply_migrations(database_url)

    with psycopg.connect(database_url) as conn:
        details = [row[0] for row in conn.execute("SELECT detail FROM events ORDER BY id").fetchall()]
        suppressions = conn.execute("SELECT reason, detail, keyed FROM suppressions ORDER BY reason").fetchall()
        leads = conn.execute("SELECT email_hash, email_hash_keyed FROM leads").fetchall()
    assert details == [
        "550 5.1.1 <redacted>: Recipient address rejected",
        "https://shop.example.com/offer",
        "",
    ]
    assert suppressions == [("bounced", "ses: smtp; 550 redacted no such user", False), ("erased", "", False)]
    assert leads == [(hashlib.sha256(b"jane@example.com").hexdigest(), False)]
