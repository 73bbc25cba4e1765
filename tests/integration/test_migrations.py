from __future__ import annotations

import threading

import psycopg
import pytest

from services.common.migrate import apply_migrations, available_migrations

pytestmark = pytest.mark.integration


def test_migrate_applies_every_migration_once_and_is_idempotent(database_url: str) -> None:
    first = apply_migrations(database_url)
    second = apply_migrations(database_url)

    assert first == [m.version for m in available_migrations()]
    assert second == []
    with psycopg.connect(database_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == first


def test_concurrent_migrations_apply_each_version_exactly_once(database_url: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def migrate() -> None:
        barrier.wait()
        try:
            results.append(apply_migrations(database_url))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    applied = [version for result in results for version in result]
    assert sorted(applied) == [m.version for m in available_migrations()]


def test_constraints_reject_invalid_rows(migrated_database_url: str) -> None:
    with psycopg.connect(migrated_database_url) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
                   VALUES (gen_random_uuid(), 'a@example.com', 'a@example.com', 'Not A Slug', true)"""
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                """INSERT INTO enrollments (id, lead_id, sequence_id, revision, next_run_at, status)
                   VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 1, now(), 'active')"""
            )
