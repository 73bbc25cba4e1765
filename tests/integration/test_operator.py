"""The running operator (kopf) against kmock's Kubernetes API emulator and a real PostgreSQL: create,
update, invalid spec, ConfigMap templates, refreshed counts, delete through the finalizer, restart.

The emulator stores objects and serves list/watch/patch like an API server, finalizers and
deletionTimestamp included (tests/support/kube.py adds resourceVersion and generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import kmock
import kopf
import pytest

from operators.sequence.main import run_operator
from services.common.config import OperatorSettings
from services.common.sequences import sequence_id
from tests.support.kube import SEQUENCES, ApiServerEmulator, kubernetes_api
from tests.support.platform import fetch_all

pytestmark = pytest.mark.integration

BASE = "/apis/healingwork.io/v1alpha1/namespaces/default/sequences"


@pytest.fixture
async def k8s() -> AsyncIterator[ApiServerEmulator]:
    async with kubernetes_api() as server:
        yield server


@contextlib.asynccontextmanager
async def operator(k8s: ApiServerEmulator, database_url: str, refresh_s: float = 3600) -> AsyncIterator[None]:
    settings = OperatorSettings(
        database_url=database_url,
        operator_namespaces="default",
        operator_refresh_interval_s=refresh_s,
        health_port=0,
    )
    stop = asyncio.Event()
    connection = kopf.ConnectionInfo(server=str(k8s.url).rstrip("/"), scheme="Bearer", token="test")
    task = asyncio.create_task(run_operator(settings, stop_flag=stop, connection=connection))
    try:
        yield
        assert not task.done(), f"the operator stopped: {task.exception() if task.done() else ''}"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def api(k8s: ApiServerEmulator, method: str, path: str, body: Any = None) -> Any:
    headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, str(k8s.url).rstrip("/") + path, json=body, headers=headers) as response,
    ):
        assert response.status < 300, await response.text()
        return await response.json()


def sequence_body(name: str = "welcome", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": name, "namespace": "default", "uid": str(uuid.uuid4())},
        "spec": {
            "trigger": {"sources": ["website"]},
            "steps": [
                {"name": "hello", "delay": "0s", "subject": "Hi {{ lead.first_name or 'there' }}", "text": "Hello"},
                {"name": "later", "delay": "2d", "subject": "Later", "text": "Later"},
            ],
            **spec,
        },
    }


def stored(k8s: ApiServerEmulator, name: str = "welcome") -> dict[str, Any]:
    try:
        obj = k8s.objects[SEQUENCES, "default", name]
    except KeyError:
        return {}
    if obj.deleted:
        return {}
    raw: dict[str, Any] = obj.raw
    return raw


def condition(k8s: ApiServerEmulator, kind: str, name: str = "welcome") -> dict[str, Any]:
    conditions = (stored(k8s, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def events(k8s: ApiServerEmulator, name: str = "welcome") -> list[dict[str, Any]]:
    """The Events the operator posted about the object, from the emulator's request log (the emulator
    keeps one object per name and kopf's Events use generateName, so only the log has them all)."""
    posted = [r.data for r in k8s[kmock.resource("v1/events")] if r.method == kmock.method.POST]
    return [e for e in posted if e.get("involvedObject", {}).get("name") == name]


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout} s waiting for: {what}")


async def create_ready(k8s: ApiServerEmulator) -> None:
    """Create the default Sequence and wait until the operator reports it Ready."""
    await api(k8s, "POST", BASE, sequence_body())
    await eventually(lambda: condition(k8s, "Ready").get("status") == "True", "Ready")


async def revisions(database_url: str, name: str = "welcome") -> list[int]:
    rows = await fetch_all(
        database_url,
        "SELECT revision FROM sequence_revisions WHERE sequence_id = %s ORDER BY revision",
        sequence_id("default", name),
    )
    return [int(row["revision"]) for row in rows]  # type: ignore[call-overload]


async def test_a_created_sequence_is_stored_and_reported_ready(
    k8s: ApiServerEmulator, migrated_database_url: str
) -> None:
    async with operator(k8s, migrated_database_url):
        await create_ready(k8s)

    status = stored(k8s)["status"]
    assert (status["observedGeneration"], status["revision"], status["steps"]) == (1, 1, 2)
    assert status["activeEnrollments"] == 0
    assert condition(k8s, "Valid")["status"] == "True"
    assert condition(k8s, "Ready")["reason"] == "Synced"
    assert "healingwork.io/sequence" in stored(k8s)["metadata"]["finalizers"]
    assert await revisions(migrated_database_url) == [1]
    assert [e["reason"] for e in events(k8s)] == ["RevisionStored"]


async def test_an_update_becomes_the_revision_of_its_generation(
    k8s: ApiServerEmulator, migrated_database_url: str
) -> None:
    async with operator(k8s, migrated_database_url):
        await api(k8s, "POST", BASE, sequence_body())
        await eventually(lambda: stored(k8s).get("status", {}).get("revision") == 1, "revision 1")
        changed = sequence_body(paused=True)
        await api(k8s, "PATCH", f"{BASE}/welcome", {"spec": changed["spec"]})
        await eventually(lambda: stored(k8s).get("status", {}).get("observedGeneration") == 2, "generation 2")

    assert stored(k8s)["status"]["revision"] == 2
    assert condition(k8s, "Ready")["reason"] == "Paused"
    assert await revisions(migrated_database_url) == [1, 2]
    [paused] = await fetch_all(migrated_database_url, "SELECT paused FROM sequences")
    assert paused == {"paused": True}


async def test_an_invalid_spec_is_reported_with_a_warning_and_changes_nothing(
    k8s: ApiServerEmulator, migrated_database_url: str
) -> None:
    async with operator(k8s, migrated_database_url):
        await create_ready(k8s)
        broken = sequence_body()
        broken["spec"]["steps"][1]["subject"] = "{{ lead.first_name | nosuchfilter }}"
        await api(k8s, "PATCH", f"{BASE}/welcome", {"spec": broken["spec"]})
        await eventually(lambda: condition(k8s, "Valid").get("status") == "False", "Valid=False")
        # The operator keeps working: a valid change after the broken one is applied.
        fixed = sequence_body()
        fixed["spec"]["steps"][1]["subject"] = "Fixed"
        await api(k8s, "PATCH", f"{BASE}/welcome", {"spec": fixed["spec"]})
        await eventually(lambda: stored(k8s).get("status", {}).get("observedGeneration") == 3, "generation 3")

    warnings = [e for e in events(k8s) if e["type"] == "Warning"]
    assert len(warnings) == 1
    assert warnings[0]["reason"] == "InvalidSpec"
    assert "spec.steps[1] (later)" in warnings[0]["message"]
    assert "nosuchfilter" in warnings[0]["message"]
    assert await revisions(migrated_database_url) == [1, 3]
    assert condition(k8s, "Valid")["status"] == "True"


async def test_a_missing_config_map_is_reported_naming_the_field(
    k8s: ApiServerEmulator, migrated_database_url: str
) -> None:
    body = sequence_body()
    body["spec"]["steps"][1] = {"name": "later", "subject": "Later", "templateRef": {"configMap": "t", "htmlKey": "x"}}
    async with operator(k8s, migrated_database_url):
        await api(k8s, "POST", BASE, body)
        await eventually(lambda: condition(k8s, "Valid").get("status") == "False", "Valid=False")

    assert condition(k8s, "Valid")["message"] == (
        "spec.steps[1].templateRef.configMap: ConfigMap default/t not found"
        " (only ConfigMaps labelled healingwork.io/templates=true are read)"
    )
    assert condition(k8s, "Ready")["status"] == "False"
    assert await revisions(migrated_database_url) == []


async def test_templates_come_from_config_maps_and_counts_are_refreshed(
    k8s: ApiServerEmulator, migrated_database_url: str
) -> None:
    await api(
        k8s,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "t", "namespace": "default", "labels": {"healingwork.io/templates": "true"}},
            "data": {"x": "<p>From the map</p>"},
        },
    )
    body = sequence_body()
    body["spec"]["steps"][1] = {"name": "later", "subject": "Later", "templateRef": {"configMap": "t", "htmlKey": "x"}}
    async with operator(k8s, migrated_database_url, refresh_s=0.5):
        await api(k8s, "POST", BASE, body)
        await eventually(lambda: condition(k8s, "Ready").get("status") == "True", "Ready")
        await _enroll_a_lead(migrated_database_url)
        await eventually(lambda: stored(k8s)["status"].get("activeEnrollments") == 1, "the count refreshed")

    [step] = await fetch_all(migrated_database_url, "SELECT html FROM sequence_steps WHERE name = 'later'")
    assert step == {"html": "<p>From the map</p>"}


async def _enroll_a_lead(database_url: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        lead = uuid.uuid4()
        await conn.execute(
            """INSERT INTO leads (id, email, email_normalized, source, consent_marketing)
               VALUES (%s, 'a@example.com', 'a@example.com', 'website', true)""",
            (lead,),
        )
        await conn.execute(
            """INSERT INTO enrollments (id, lead_id, sequence_id, revision, next_step, next_run_at, status)
               VALUES (%s, %s, %s, 1, 0, now(), 'active')""",
            (uuid.uuid4(), lead, sequence_id("default", "welcome")),
        )


async def test_deletion_passes_the_finalizer_and_cancels_pending_steps(
    k8s: ApiServerEmulator, migrated_database_url: str
) -> None:
    async with operator(k8s, migrated_database_url):
        await create_ready(k8s)
        await _enroll_a_lead(migrated_database_url)
        await api(k8s, "DELETE", f"{BASE}/welcome")
        await eventually(lambda: stored(k8s) == {}, "the object is gone")

    rows = await fetch_all(migrated_database_url, "SELECT status FROM enrollments")
    assert rows == [{"status": "cancelled"}]
    [sequence] = await fetch_all(migrated_database_url, "SELECT deleted_at IS NOT NULL AS deleted FROM sequences")
    assert sequence == {"deleted": True}


async def test_restarting_the_operator_changes_nothing_but_refreshes_counts(
    k8s: ApiServerEmulator, migrated_database_url: str
) -> None:
    async with operator(k8s, migrated_database_url):
        await create_ready(k8s)
    before = stored(k8s)["status"]
    events_before = len(events(k8s))
    await _enroll_a_lead(migrated_database_url)  # while the operator is down

    async with operator(k8s, migrated_database_url):
        # The resume handler reconciles every existing Sequence on start.
        await eventually(lambda: stored(k8s)["status"].get("activeEnrollments") == 1, "resumed")

    after = stored(k8s)["status"]
    assert {**after, "activeEnrollments": 0} == before
    assert len(events(k8s)) == events_before
    assert await revisions(migrated_database_url) == [1]


async def test_a_condition_that_does_not_compile_is_reported_valid_false_naming_the_field(
    k8s: ApiServerEmulator, migrated_database_url: str
) -> None:
    body = sequence_body()
    body["spec"]["steps"][1]["when"] = "!events.exists(e, e.type == 'opened' && e.step == 'helo')"
    body["spec"]["exitWhen"] = "events.exists(e, e.type == 'purchased') && nosuch"
    async with operator(k8s, migrated_database_url):
        await api(k8s, "POST", BASE, body)
        await eventually(lambda: condition(k8s, "Valid").get("status") == "False", "Valid=False")
        # The Event is posted after the status.
        await eventually(lambda: any(e["type"] == "Warning" for e in events(k8s)), "a Warning event")

    message = condition(k8s, "Valid")["message"]
    assert "undeclared reference to 'nosuch'" in message
    assert "at `$.spec.exitWhen`" in message
    assert "no step named 'helo'" in message
    assert "at `$.spec.steps[1].when`" in message
    [warning] = [e for e in events(k8s) if e["type"] == "Warning"]
    assert warning["reason"] == "InvalidSpec"
    assert await revisions(migrated_database_url) == []
