"""reconcile_sequence and finalize_sequence as plain functions over a real PostgreSQL (no kopf)."""

from __future__ import annotations

import copy
from typing import Any

import psycopg_pool
import pytest

from operators.sequence.reconcile import Reconciled, finalize_sequence, reconcile_sequence
from services.common.db import Connection, transaction
from services.common.sequence_templates import no_config_maps
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration

Pool = psycopg_pool.AsyncConnectionPool[Connection]

BODY: dict[str, Any] = {
    "apiVersion": "healingwork.io/v1alpha1",
    "kind": "Sequence",
    "metadata": {"name": "welcome", "namespace": "marketing", "generation": 4, "uid": "u", "resourceVersion": "9"},
    "spec": {
        "trigger": {"all": True},
        "paused": False,
        "steps": [{"name": "hello", "delay": "0s", "subject": "Hi", "text": "Hello {{ lead.first_name or '' }}"}],
    },
    "status": {},
}


async def reconcile(pool: Pool, body: dict[str, Any]) -> Reconciled:
    async with transaction(pool) as conn:
        return await reconcile_sequence(conn, body, no_config_maps)


def conditions(result: Reconciled) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in result.status["conditions"]}


async def test_a_valid_sequence_is_stored_at_its_generation_and_reported_ready(pool: Pool) -> None:
    result = await reconcile(pool, BODY)

    assert result.status["observedGeneration"] == 4
    assert result.status["revision"] == 4
    assert (conditions(result)["Valid"]["status"], conditions(result)["Ready"]["reason"]) == ("True", "Synced")
    assert result.event is not None
    assert (result.event.type, result.event.reason) == ("Normal", "RevisionStored")


async def test_reconciling_again_changes_nothing_and_keeps_transition_times(pool: Pool) -> None:
    first = await reconcile(pool, BODY)
    again = await reconcile(pool, {**BODY, "status": first.status})

    assert again.status == first.status
    assert again.event is None
    assert await fetch_all(pool.conninfo, "SELECT revision FROM sequence_revisions") == [{"revision": 4}]


async def test_an_invalid_change_keeps_the_last_valid_revision_running(pool: Pool) -> None:
    first = await reconcile(pool, BODY)
    broken = copy.deepcopy(BODY)
    broken["metadata"]["generation"] = 5
    broken["spec"]["steps"][0]["text"] = "{{ lead.first_name.nope() }}"
    broken["status"] = first.status

    result = await reconcile(pool, broken)

    assert result.status["revision"] == 4
    assert result.status["observedGeneration"] == 5
    valid, ready = conditions(result)["Valid"], conditions(result)["Ready"]
    assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
    assert valid["message"].startswith("spec.steps[0] (hello): template error:")
    assert ready["message"] == "the spec is invalid; revision 4 keeps running"
    assert result.event is not None
    assert result.event.type == "Warning"


def with_text(text: str) -> dict[str, Any]:
    body = copy.deepcopy(BODY)
    body["spec"]["steps"][0]["text"] = text
    return body


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{{ 10 // 0 }}", "template error: ZeroDivisionError: integer division or modulo by zero (in the text)"),
        ('{{ "a" * 50000000 }}', "template error: a repetition would be 50,000,000 long, over the limit of 1,048,576"),
        ("{% for i in range(10 ** 9) %}{% endfor %}", "template error: a range is over the limit of 100,000 items"),
    ],
)
async def test_a_template_failing_in_any_way_is_valid_false_naming_the_step_and_the_error(
    pool: Pool, text: str, error: str
) -> None:
    result = await reconcile(pool, with_text(text))

    valid = conditions(result)["Valid"]
    assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
    assert valid["message"].startswith(f"spec.steps[0] (hello): {error}")
    assert result.event is not None
    assert result.event.type == "Warning"
    assert await fetch_all(pool.conninfo, "SELECT revision FROM sequence_revisions") == []


async def test_a_step_using_the_unsubscribe_url_is_valid(pool: Pool) -> None:
    result = await reconcile(pool, with_text("Leave any time: {{ unsubscribe_url }}"))

    assert conditions(result)["Valid"]["status"] == "True"
    assert result.status["revision"] == 4


async def test_a_body_the_structs_refuse_is_reported_not_raised(pool: Pool) -> None:
    broken = copy.deepcopy(BODY)
    broken["spec"]["steps"][0]["delay"] = "soon"

    result = await reconcile(pool, broken)

    assert conditions(result)["Valid"]["status"] == "False"
    assert "$.spec.steps[0].delay" in conditions(result)["Valid"]["message"]
    assert "revision" not in result.status


async def test_a_paused_sequence_is_ready_with_reason_paused(pool: Pool) -> None:
    paused = copy.deepcopy(BODY)
    paused["spec"]["paused"] = True

    result = await reconcile(pool, paused)

    assert conditions(result)["Ready"]["reason"] == "Paused"


async def test_finalizing_twice_is_harmless(pool: Pool) -> None:
    await reconcile(pool, BODY)

    async with transaction(pool) as conn:
        await finalize_sequence(conn, BODY)
    async with transaction(pool) as conn:
        second = await finalize_sequence(conn, BODY)

    assert (second.cancelled_enrollments, second.skipped_messages) == (0, 0)
    [row] = await fetch_all(pool.conninfo, "SELECT deleted_at IS NOT NULL AS deleted FROM sequences")
    assert row == {"deleted": True}
