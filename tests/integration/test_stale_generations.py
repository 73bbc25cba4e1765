"""Stale writes and the sweep, as plain functions over a real PostgreSQL: a handler that runs behind a
newer one never stores the older generation, and Sequences whose resource is gone are marked deleted."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import psycopg_pool
import pytest

from operators.sequence.reconcile import Reconciled, finalize_sequence, reconcile_sequence
from services.common.clock import database_now
from services.common.db import Connection, transaction
from services.common.sequence_templates import no_config_maps
from services.common.sequences import (
    apply_sequence,
    mark_vanished_sequences,
    parse_sequence_document,
    sequence_id,
)
from services.scheduler.enrollment import enroll_lead
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]
UID = "9b7c3f5e-0000-4000-8000-000000000001"


def body(generation: int, subject: str, *, name: str = "welcome", uid: str = UID) -> dict[str, Any]:
    return {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": name, "namespace": "marketing", "generation": generation, "uid": uid},
        "spec": {
            "trigger": {"all": True},
            "revisionPolicy": "Latest",
            "steps": [
                {"name": "hello", "delay": "0s", "subject": subject, "text": "Hello"},
                {"name": "later", "delay": "2d", "subject": f"{subject} again", "text": "Later"},
            ],
        },
        "status": {},
    }


async def reconcile(pool: Pool, obj: dict[str, Any]) -> Reconciled:
    async with transaction(pool) as conn:
        return await reconcile_sequence(conn, obj, no_config_maps)


async def current_subject(pool: Pool, name: str = "welcome") -> tuple[int, str]:
    [row] = await fetch_all(
        pool.conninfo,
        """SELECT s.current_revision AS revision, st.subject FROM sequences s
           JOIN sequence_steps st ON st.sequence_id = s.id AND st.revision = s.current_revision
           WHERE s.id = %s AND st.position = 0""",
        sequence_id("marketing", name),
    )
    return int(row["revision"]), str(row["subject"])  # type: ignore[call-overload]


async def test_a_stale_generation_after_a_newer_one_changes_nothing(pool: Pool) -> None:
    await reconcile(pool, body(4, "Four"))
    await reconcile(pool, body(5, "Five"))

    stale = await reconcile(pool, body(4, "Four"))

    assert stale == Reconciled({}, None)  # no status written over generation 5's
    assert await current_subject(pool) == (5, "Five")
    rows = await fetch_all(
        pool.conninfo,
        "SELECT revision, generation FROM sequence_revisions WHERE sequence_id = %s ORDER BY revision",
        sequence_id("marketing", "welcome"),
    )
    assert rows == [{"revision": 4, "generation": 4}, {"revision": 5, "generation": 5}]


async def test_under_revision_policy_latest_leads_keep_the_new_content_after_a_stale_reconcile(pool: Pool) -> None:
    await reconcile(pool, body(4, "Four"))
    lead = uuid.uuid4()
    async with transaction(pool) as conn:
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
               VALUES (%s, 'ada@example.com', 'ada@example.com', 'website', true)""",
            (lead,),
        )
        await enroll_lead(conn, lead)
    await reconcile(pool, body(5, "Five"))

    await reconcile(pool, body(4, "Four"))

    [enrollment] = await fetch_all(pool.conninfo, "SELECT revision FROM enrollments WHERE lead_id = %s", lead)
    assert enrollment == {"revision": 5}


async def test_a_sequence_created_again_under_the_same_name_is_not_stale(pool: Pool) -> None:
    await reconcile(pool, body(5, "Old object"))

    # Deleted by hand (finalizer removed, nothing recorded) and created again: generation restarts at 1.
    result = await reconcile(pool, body(1, "New object", uid="9b7c3f5e-0000-4000-8000-000000000002"))

    assert result.status["observedGeneration"] == 1
    assert await current_subject(pool) == (6, "New object")


async def test_the_sweep_marks_deleted_only_sequences_gone_from_the_api_server(pool: Pool) -> None:
    await reconcile(pool, body(1, "Kept", name="kept"))
    await reconcile(pool, body(1, "Gone", name="gone"))
    async with transaction(pool) as conn:
        document = copy.deepcopy(body(1, "From a file", name="from-file"))
        del document["metadata"]["generation"], document["metadata"]["uid"], document["status"]
        await apply_sequence(conn, parse_sequence_document(document, "from-file.yaml"))
    async with transaction(pool) as conn:
        listed_after = await database_now(conn)

    async with transaction(pool) as conn:
        swept = await mark_vanished_sequences(conn, {("marketing", "kept")}, None, listed_after)

    assert swept == [("marketing", "gone")]
    rows = await fetch_all(pool.conninfo, "SELECT name, deleted_at IS NOT NULL AS deleted FROM sequences ORDER BY name")
    assert rows == [
        {"name": "from-file", "deleted": False},
        {"name": "gone", "deleted": True},
        {"name": "kept", "deleted": False},
    ]


async def test_the_sweep_spares_a_sequence_written_after_the_listing_began(pool: Pool) -> None:
    async with transaction(pool) as conn:
        listed_after = await database_now(conn)
    await reconcile(pool, body(1, "Created meanwhile", name="new"))

    async with transaction(pool) as conn:
        swept = await mark_vanished_sequences(conn, set(), ["marketing"], listed_after)

    assert swept == []


async def test_finalizing_an_old_object_spares_the_one_created_again_under_its_name(pool: Pool) -> None:
    await reconcile(pool, body(3, "Old object"))
    new_uid = "9b7c3f5e-0000-4000-8000-000000000003"
    await reconcile(pool, body(1, "New object", uid=new_uid))

    async with transaction(pool) as conn:
        await finalize_sequence(conn, body(3, "Old object"))  # the old object's delete handler, late

    [row] = await fetch_all(
        pool.conninfo,
        "SELECT deleted_at IS NULL AS live FROM sequences WHERE id = %s",
        sequence_id("marketing", "welcome"),
    )
    assert row == {"live": True}
    async with transaction(pool) as conn:
        await finalize_sequence(conn, body(1, "New object", uid=new_uid))
    [row] = await fetch_all(
        pool.conninfo,
        "SELECT deleted_at IS NULL AS live FROM sequences WHERE id = %s",
        sequence_id("marketing", "welcome"),
    )
    assert row == {"live": False}
