"""The operator under failure, as a real process against a real API server (see test_operator.py for
how it runs): a database outage during a delete and during an edit, a finalizer removed by hand, an
error nobody foresaw. The operator's database is a PostgreSQL of this module alone, stopped and started
under it; the retry backoff is capped at 1 s so a test sees many more retries than the 8 the operator
used to give up after.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.embedded import EmbeddedPostgres
from services.common.migrate import apply_migrations
from services.common.sequences import sequence_id
from tests.kubernetes.test_operator import (
    OperatorProcess,
    OperatorRelease,
    condition,
    events,
    eventually,
    get_sequence,
    operator_release,
    query,
    ready,
    running_operator,
    sequence,
)
from tests.support.kubernetes import KubernetesCluster

__all__ = ["operator_release"]  # the fixture, shared with test_operator.py

pytestmark = pytest.mark.kubernetes

# More retries than the operator used to make before giving up (8), at the capped backoff.
RETRIES_BEYOND_THE_OLD_LIMIT = 12


@pytest.fixture(scope="module")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this module alone, to stop and start under the operator."""
    with EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data") as server:
        yield server


@pytest.fixture
def outage_database(private_postgres: EmbeddedPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    private_postgres.start()  # idempotent: a failed test may have left it stopped
    name = re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:40]
    url = private_postgres.create_database(name)
    apply_migrations(url)
    yield url
    private_postgres.start()


def operator_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "DB_CONNECT_TIMEOUT_S": "1",
        "OPERATOR_RETRY_MAX_DELAY_S": "1",
        **extra,
    }


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def temporary_failures(operator: OperatorProcess, handler: str) -> int:
    """How many times kopf logged ``handler`` failing temporarily (each is one retry to come)."""
    return operator.log().count(f".{handler}' failed temporarily")


def execute(database_url: str, statement: str) -> None:
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        conn.execute(statement)


def stored_row(database_url: str, namespace: str, name: str) -> dict[str, Any]:
    [row] = query(
        database_url,
        "SELECT deleted_at IS NOT NULL AS deleted, current_revision FROM sequences WHERE id = %s",
        sequence_id(namespace, name),
    )
    return row


def test_a_delete_during_a_database_outage_waits_for_the_database_and_never_gives_up(
    kubernetes_cluster: KubernetesCluster,
    operator_release: OperatorRelease,
    private_postgres: EmbeddedPostgres,
    outage_database: str,
    tmp_path: Path,
) -> None:
    cluster, namespace = kubernetes_cluster, operator_release.namespace
    with running_operator(cluster, operator_release, tmp_path, operator_env(outage_database)) as operator:
        cluster.apply(sequence("outage-delete"), namespace=namespace)
        eventually(lambda: ready(cluster, namespace, "outage-delete", 1), "Ready", operator)

        private_postgres.stop()
        cluster.kubectl("delete", "sequence", "outage-delete", "-n", namespace, "--wait=false")
        eventually(
            lambda: temporary_failures(operator, "sequence_deleted") >= RETRIES_BEYOND_THE_OLD_LIMIT,
            f"{RETRIES_BEYOND_THE_OLD_LIMIT} retries of the delete",
            operator,
            timeout=120,
        )

        # Still there, finalizer held, and the status says why.
        obj = get_sequence(cluster, namespace, "outage-delete")
        assert obj is not None, f"the finalizer was removed during the outage:\n{operator.log()}"
        assert "healingwork.io/sequence" in obj["metadata"]["finalizers"]
        assert condition(obj, "Ready")["status"] == "False"
        assert condition(obj, "Ready")["reason"] == "DatabaseUnavailable"
        assert "the deletion waits" in condition(obj, "Ready")["message"]

        private_postgres.start()
        eventually(lambda: get_sequence(cluster, namespace, "outage-delete") is None, "the delete finished", operator)
    assert stored_row(outage_database, namespace, "outage-delete")["deleted"] is True


def test_an_edit_during_a_database_outage_is_not_reported_ready_until_applied(
    kubernetes_cluster: KubernetesCluster,
    operator_release: OperatorRelease,
    private_postgres: EmbeddedPostgres,
    outage_database: str,
    tmp_path: Path,
) -> None:
    cluster, namespace = kubernetes_cluster, operator_release.namespace
    with running_operator(cluster, operator_release, tmp_path, operator_env(outage_database)) as operator:
        cluster.apply(sequence("outage-edit"), namespace=namespace)
        eventually(lambda: ready(cluster, namespace, "outage-edit", 1), "Ready", operator)
        assert http_get(operator.health_port, "/readyz")[0] == 200

        private_postgres.stop()
        cluster.apply(sequence("outage-edit", paused=True), namespace=namespace)

        def unavailable() -> dict[str, Any] | None:
            obj = get_sequence(cluster, namespace, "outage-edit")
            return obj if condition(obj, "Ready").get("reason") == "DatabaseUnavailable" else None

        obj = eventually(unavailable, "Ready=False DatabaseUnavailable", operator)
        assert condition(obj, "Ready")["status"] == "False"
        assert "generation 2 is not applied yet" in condition(obj, "Ready")["message"]
        assert obj["status"]["observedGeneration"] == 1
        waited = cluster.kubectl(
            "wait", "--for=condition=Ready", "--timeout=3s", "sequence/outage-edit", "-n", namespace, check=False
        )
        assert waited.returncode != 0, f"kubectl wait passed on an unapplied change:\n{waited.stdout}"
        eventually(lambda: http_get(operator.health_port, "/readyz")[0] == 503, "/readyz 503", operator)

        private_postgres.start()
        obj = eventually(lambda: ready(cluster, namespace, "outage-edit", 2), "generation 2 applied", operator)
        assert condition(obj, "Ready")["reason"] == "Paused"
        cluster.kubectl("wait", "--for=condition=Ready", "--timeout=30s", "sequence/outage-edit", "-n", namespace)
        eventually(lambda: http_get(operator.health_port, "/readyz")[0] == 200, "/readyz 200 again", operator)
        metrics = http_get(operator.health_port, "/metrics")[1]
        assert 'healingwork_operator_reconciles_total{result="database_unavailable"}' in metrics
        assert 'healingwork_operator_reconciles_total{result="synced"}' in metrics
        assert "healingwork_operator_reconcile_duration_seconds_bucket" in metrics
        assert "healingwork_operator_sequences_not_ready" in metrics
    assert stored_row(outage_database, namespace, "outage-edit")["current_revision"] == 2


def test_a_sequence_whose_finalizer_was_removed_by_hand_is_swept(
    kubernetes_cluster: KubernetesCluster,
    operator_release: OperatorRelease,
    outage_database: str,
    tmp_path: Path,
) -> None:
    cluster, namespace = kubernetes_cluster, operator_release.namespace
    env = operator_env(outage_database, OPERATOR_SWEEP_INTERVAL_S="1")
    with running_operator(cluster, operator_release, tmp_path, env) as operator:
        cluster.apply(sequence("by-hand"), namespace=namespace)
        cluster.apply(sequence("bystander"), namespace=namespace)
        eventually(lambda: ready(cluster, namespace, "by-hand", 1), "Ready", operator)
        eventually(lambda: ready(cluster, namespace, "bystander", 1), "bystander Ready", operator)

    # The operator is down; someone deletes the Sequence and removes its finalizer by hand.
    cluster.kubectl("delete", "sequence", "by-hand", "-n", namespace, "--wait=false")
    cluster.kubectl(
        "patch",
        "sequence",
        "by-hand",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"metadata": {"finalizers": None}}),
    )
    assert get_sequence(cluster, namespace, "by-hand") is None
    assert stored_row(outage_database, namespace, "by-hand")["deleted"] is False

    with running_operator(cluster, operator_release, tmp_path, env) as operator:
        eventually(lambda: stored_row(outage_database, namespace, "by-hand")["deleted"], "the sweep", operator)
        assert f"Sequence {namespace}/by-hand is gone from the API server" in operator.log()
    assert stored_row(outage_database, namespace, "bystander")["deleted"] is False


def test_an_unforeseen_error_becomes_valid_false_with_a_warning_and_heals(
    kubernetes_cluster: KubernetesCluster,
    operator_release: OperatorRelease,
    outage_database: str,
    tmp_path: Path,
) -> None:
    cluster, namespace = kubernetes_cluster, operator_release.namespace
    # Not an outage and not a bad spec: a schema the code cannot use (as a botched migration would leave).
    execute(outage_database, "ALTER TABLE sequence_revisions RENAME COLUMN resource_uid TO renamed_uid")
    with running_operator(cluster, operator_release, tmp_path, operator_env(outage_database)) as operator:
        cluster.apply(sequence("unforeseen"), namespace=namespace)

        def failed() -> dict[str, Any] | None:
            obj = get_sequence(cluster, namespace, "unforeseen")
            return obj if condition(obj, "Valid").get("reason") == "ReconcileError" else None

        obj = eventually(failed, "Valid=False ReconcileError", operator)
        assert condition(obj, "Valid")["status"] == "False"
        assert condition(obj, "Ready")["status"] == "False"
        message = condition(obj, "Valid")["message"]
        assert message.startswith("reconciling failed: UndefinedColumn:"), message
        assert "Traceback" not in message
        assert "\n" not in message
        warnings = eventually(
            lambda: [e for e in events(cluster, namespace, "unforeseen") if e["type"] == "Warning"],
            "a Warning",
            operator,
        )
        assert [e["reason"] for e in warnings] == ["ReconcileError"]

        # Repaired: the refresh timer (every 2 s in this release) applies it without an edit.
        execute(outage_database, "ALTER TABLE sequence_revisions RENAME COLUMN renamed_uid TO resource_uid")
        eventually(lambda: ready(cluster, namespace, "unforeseen", 1), "Ready after the repair", operator)
