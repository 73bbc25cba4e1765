"""Helpers for job tests: settings, a job context over a real pool, queued messages, bulk fixtures."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import psycopg_pool

from proto.codec import decode_message
from proto.messages import AnyMessage
from services.common.config import JobSettings
from services.common.db import Connection, open_pool, transaction
from services.jobs.runner import JobContext
from services.scheduler.due import emit_due_steps
from services.scheduler.enrollment import enroll_lead
from tests.support.platform import fetch_all

Pool = psycopg_pool.AsyncConnectionPool[Connection]


def job_settings(database_url: str, **overrides: object) -> JobSettings:
    return msgspec.convert({"database_url": database_url, **overrides}, JobSettings)


@asynccontextmanager
async def job_context(settings: JobSettings, name: str = "test") -> AsyncIterator[JobContext]:
    """What run_job hands a job, without the lock and logging around it."""
    pool = await open_pool(settings)
    try:
        yield JobContext(name, "test-run", settings, pool)
    finally:
        await pool.close()


async def insert_lead(pool: Pool, email: str | None = None, *, source: str = "website") -> uuid.UUID:
    lead_id = uuid.uuid4()
    email = email or f"{lead_id.hex[:12]}@example.com"
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, first_name, source, consent_marketing)
               VALUES (%s, %s, %s, 'Ada', %s, true)""",
            (lead_id, email, email.lower(), source),
        )
    return lead_id


async def queued_message(pool: Pool, email: str | None = None) -> uuid.UUID:
    """A lead enrolled into the welcome example with its first step queued; returns the message id."""
    lead_id = await insert_lead(pool, email)
    async with transaction(pool) as conn:
        await enroll_lead(conn, lead_id)
        [step] = await emit_due_steps(conn, limit=10, topic="email.dispatch")
    return step.message_id


async def outbox_messages(database_url: str, topic: str) -> list[AnyMessage]:
    rows = await fetch_all(database_url, "SELECT payload FROM outbox WHERE topic = %s ORDER BY id", topic)
    return [decode_message(bytes(row["payload"])) for row in rows]  # type: ignore[arg-type]


async def bulk_messages(pool: Pool, count: int, *, status: str, sequence: str = "welcome") -> None:
    """``count`` leads, each enrolled (completed) with one step-0 message in ``status``, in one statement
    per table; ``retrying`` ones are due, ``sent`` ones are sent; everything is two days old."""
    async with transaction(pool) as conn:
        await conn.execute(
            """WITH s AS (SELECT id, current_revision FROM sequences WHERE name = %(sequence)s),
               l AS (
                   INSERT INTO leads (id, email, email_normalized, source, consent_marketing, created_at, enrolled_at)
                   SELECT gen_random_uuid(), 'bulk' || i || '-' || %(status)s || '@example.com',
                          'bulk' || i || '-' || %(status)s || '@example.com', 'website', true,
                          now() - interval '2 days', now() - interval '2 days'
                   FROM generate_series(1, %(count)s) i
                   RETURNING id),
               e AS (
                   INSERT INTO enrollments (id, lead_id, sequence_id, revision, next_step, status, created_at)
                   SELECT gen_random_uuid(), l.id, s.id, s.current_revision, 1, 'completed', now() - interval '2 days'
                   FROM l, s
                   RETURNING id, lead_id, sequence_id, revision)
               INSERT INTO messages (id, enrollment_id, lead_id, sequence_id, revision, step_position, status,
                                     attempts, next_attempt_at, queued_at, sending_at, sent_at, updated_at)
               SELECT gen_random_uuid(), e.id, e.lead_id, e.sequence_id, e.revision, 0, %(status)s,
                      CASE WHEN %(status)s = 'queued' THEN 0 ELSE 1 END,
                      CASE WHEN %(status)s = 'retrying' THEN now() - interval '1 minute' END,
                      now() - interval '2 days',
                      CASE WHEN %(status)s <> 'queued' THEN now() - interval '2 days' END,
                      CASE WHEN %(status)s = 'sent' THEN now() - interval '2 days' END,
                      now() - interval '2 days'
               FROM e""",
            {"count": count, "status": status, "sequence": sequence},
        )
