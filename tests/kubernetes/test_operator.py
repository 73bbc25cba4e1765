"""The operator (``healingwork operator``) as a real process against a real API server and PostgreSQL,
authenticated as the chart's ServiceAccount: a permission missing from the chart's RBAC fails these tests.

The chart is installed (minimal values, its database the test PostgreSQL, the refresh timer at 2 s);
the operator Deployment's Pod cannot run without a kubelet, so each test runs its container here with the
Pod's environment (the release ConfigMap and Secret, resolved through the API server) and a kubeconfig
holding a token of the Deployment's ServiceAccount from the TokenRequest API (``kubectl create token``),
as the kubelet would mount it. Only HEALTH_PORT differs (a free port, polled for /healthz).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from services.common.sequences import sequence_id
from tests.kubernetes.conftest import HEALINGWORK, Release, container_env, helm_with_hook, valid_sequence
from tests.support.kubernetes import KubernetesCluster, die_with_parent, free_port
from tests.support.services import scratch_database

pytestmark = pytest.mark.kubernetes

WAIT_S = 60.0


@dataclass(frozen=True)
class OperatorRelease:
    """The installed chart whose operator the tests run."""

    release: Release
    database_url: str
    pod_spec: dict[str, Any]

    @property
    def namespace(self) -> str:
        return self.release.namespace


@pytest.fixture(scope="module")
def operator_release(
    kubernetes_cluster: KubernetesCluster, sequence_crd: str, postgres_url: str
) -> Iterator[OperatorRelease]:
    cluster = kubernetes_cluster
    with scratch_database(postgres_url) as database_url:
        namespace = cluster.create_namespace("operator")
        release = Release("hw", namespace, "hw-healingwork")
        result, hook = helm_with_hook(
            cluster,
            "install",
            release.name,
            namespace,
            "--values",
            release_values(),
            "--set",
            f"secrets.databaseUrl={database_url}",
            "--set",
            "operator.refreshIntervalSeconds=2",
            "--take-ownership",
        )
        assert result.returncode == 0, f"helm install failed:\n{result.stderr}\nhook: {hook}"
        deployment = cluster.get("deployment", f"{release.fullname}-operator", namespace=namespace)
        yield OperatorRelease(release, database_url, deployment["spec"]["template"]["spec"])


def release_values() -> Path:
    return Path(__file__).resolve().parents[2] / "charts" / "healingwork" / "ci" / "minimal-values.yaml"


class OperatorProcess:
    """``healingwork operator`` started as the operator Pod would start it (see the module docstring)."""

    def __init__(
        self,
        cluster: KubernetesCluster,
        release: OperatorRelease,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        account = release.pod_spec["serviceAccountName"]
        kubeconfig = cluster.service_account_kubeconfig(release.namespace, account, workdir / f"{account}.kubeconfig")
        self.health_port = free_port()
        container = release.pod_spec["containers"][0]
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(workdir),
            **container_env(cluster, release.namespace, release.pod_spec),
            "KUBECONFIG": str(kubeconfig),
            "HEALTH_PORT": str(self.health_port),
            **(extra_env or {}),
        }
        self.log_path = workdir / f"operator-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(HEALINGWORK), *container.get("args", [])],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        import urllib.request

        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the operator exited with {self.process.returncode}:\n{self.log()}", pytrace=False)
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.health_port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(0.2)
        pytest.fail(f"the operator's /healthz did not answer within {WAIT_S:.0f} s:\n{self.log()}", pytrace=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, as Kubernetes stops a Pod; the operator must exit within its grace period."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                pytest.fail(f"the operator did not stop within 30 s of SIGTERM:\n{self.log()}", pytrace=False)
        self._log.close()


@contextlib.contextmanager
def running_operator(
    cluster: KubernetesCluster, release: OperatorRelease, workdir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[OperatorProcess]:
    operator = OperatorProcess(cluster, release, workdir, extra_env)
    try:
        yield operator
        assert operator.process.poll() is None, f"the operator died:\n{operator.log()}"
    finally:
        operator.stop()
    # A permission missing from the chart's RBAC shows as 403 answers that kopf logs and retries.
    assert "Forbidden" not in operator.log(), operator.log()
    assert " 403" not in operator.log(), operator.log()


TWO_STEPS = [
    {"name": "hello", "delay": "0s", "subject": "Hi {{ lead.first_name or 'there' }}", "text": "Hello"},
    {"name": "later", "delay": "2d", "subject": "Later", "text": "Later"},
]


def sequence(name: str, **spec: Any) -> dict[str, Any]:
    """A valid Sequence of two steps, with ``spec`` keys replaced."""
    return valid_sequence(name, **{"steps": copy.deepcopy(TWO_STEPS), **spec})


def get_sequence(cluster: KubernetesCluster, namespace: str, name: str) -> dict[str, Any] | None:
    found = cluster.kubectl("get", "sequence", name, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        assert "NotFound" in found.stderr, found.stderr
        return None
    result: dict[str, Any] = json.loads(found.stdout)
    return result


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


def eventually(check: Callable[[], Any], what: str, operator: OperatorProcess, timeout: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (with the operator's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for: {what}\noperator log:\n{operator.log()}", pytrace=False)


def ready(cluster: KubernetesCluster, namespace: str, name: str, generation: int) -> dict[str, Any] | None:
    """The Sequence once its status reports ``generation`` observed and Ready=True, else None."""
    obj = get_sequence(cluster, namespace, name)
    status = (obj or {}).get("status") or {}
    if status.get("observedGeneration") == generation and condition(obj, "Ready").get("status") == "True":
        return obj
    return None


def events(cluster: KubernetesCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = cluster.get("events", "--field-selector", f"involvedObject.name={name}", namespace=namespace)
    return sorted(listed["items"], key=lambda e: e["metadata"]["creationTimestamp"])


def query(database_url: str, statement: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, connect_timeout=10, row_factory=dict_row) as conn:
        return conn.execute(statement, params).fetchall()


def revisions(release: OperatorRelease, name: str) -> list[int]:
    rows = query(
        release.database_url,
        "SELECT revision FROM sequence_revisions WHERE sequence_id = %s ORDER BY revision",
        sequence_id(release.namespace, name),
    )
    return [int(row["revision"]) for row in rows]


@pytest.fixture
def operator(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, tmp_path: Path
) -> Iterator[OperatorProcess]:
    with running_operator(kubernetes_cluster, operator_release, tmp_path) as process:
        yield process


def test_a_created_sequence_is_stored_and_reported_ready(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, operator: OperatorProcess
) -> None:
    cluster, namespace = kubernetes_cluster, operator_release.namespace
    cluster.apply(sequence("created"), namespace=namespace)

    obj = eventually(lambda: ready(cluster, namespace, "created", 1), "created Ready", operator)
    assert (obj["status"]["revision"], obj["status"]["steps"]) == (1, 2)
    assert condition(obj, "Valid")["status"] == "True"
    assert condition(obj, "Ready")["reason"] == "Synced"
    assert "healingwork.io/sequence" in obj["metadata"]["finalizers"]
    assert revisions(operator_release, "created") == [1]
    steps = query(
        operator_release.database_url,
        "SELECT name, delay_s FROM sequence_steps WHERE sequence_id = %s ORDER BY position",
        sequence_id(namespace, "created"),
    )
    assert steps == [{"name": "hello", "delay_s": 0}, {"name": "later", "delay_s": 2 * 86400}]
    stored = eventually(lambda: events(cluster, namespace, "created"), "the RevisionStored Event", operator)
    assert [(e["type"], e["reason"]) for e in stored] == [("Normal", "RevisionStored")]


def test_an_update_becomes_a_new_revision(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, operator: OperatorProcess
) -> None:
    cluster, namespace = kubernetes_cluster, operator_release.namespace
    cluster.apply(sequence("updated"), namespace=namespace)
    eventually(lambda: ready(cluster, namespace, "updated", 1), "revision 1", operator)

    cluster.apply(sequence("updated", paused=True), namespace=namespace)

    obj = eventually(lambda: ready(cluster, namespace, "updated", 2), "generation 2 observed", operator)
    assert obj["status"]["revision"] == 2
    assert condition(obj, "Ready")["reason"] == "Paused"
    assert revisions(operator_release, "updated") == [1, 2]
    [row] = query(
        operator_release.database_url, "SELECT paused FROM sequences WHERE id = %s", sequence_id(namespace, "updated")
    )
    assert row == {"paused": True}


def test_config_map_templates_are_stored_and_their_edits_picked_up(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, operator: OperatorProcess
) -> None:
    cluster, namespace = kubernetes_cluster, operator_release.namespace
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "templates", "labels": {"healingwork.io/templates": "true"}},
        "data": {"hello.html": "<p>Hello {{ lead.first_name or 'there' }}</p>"},
    }
    cluster.apply(config_map, namespace=namespace)
    templated = sequence("templated")
    templated["spec"]["steps"][0] = {
        "name": "hello",
        "subject": "Hi",
        "templateRef": {"configMap": "templates", "htmlKey": "hello.html"},
    }
    cluster.apply(templated, namespace=namespace)
    eventually(lambda: ready(cluster, namespace, "templated", 1), "templated Ready", operator)

    def html_of_current_revision() -> str:
        [row] = query(
            operator_release.database_url,
            """SELECT st.html FROM sequence_steps st JOIN sequences s
               ON s.id = st.sequence_id AND s.current_revision = st.revision
               WHERE s.id = %s AND st.name = 'hello'""",
            sequence_id(namespace, "templated"),
        )
        return str(row["html"])

    assert html_of_current_revision() == "<p>Hello {{ lead.first_name or 'there' }}</p>"

    # An edit of the ConfigMap alone (the Sequence unchanged) becomes a new revision.
    config_map["data"] = {"hello.html": "<p>Welcome back</p>"}
    cluster.apply(config_map, namespace=namespace)
    eventually(lambda: revisions(operator_release, "templated") == [1, 2], "revision 2 from the edit", operator)
    assert html_of_current_revision() == "<p>Welcome back</p>"


def test_an_invalid_spec_is_reported_with_a_condition_and_a_warning_and_changes_nothing(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, operator: OperatorProcess
) -> None:
    cluster, namespace = kubernetes_cluster, operator_release.namespace
    cluster.apply(sequence("invalid"), namespace=namespace)
    eventually(lambda: ready(cluster, namespace, "invalid", 1), "revision 1", operator)
    broken = sequence("invalid")
    # Valid for the CRD's schema, but the template does not compile: only the operator can tell.
    broken["spec"]["steps"][1]["subject"] = "{{ lead.first_name | nosuchfilter }}"
    cluster.apply(broken, namespace=namespace)

    def invalid() -> dict[str, Any] | None:
        obj = get_sequence(cluster, namespace, "invalid")
        return obj if condition(obj, "Valid").get("status") == "False" else None

    obj = eventually(invalid, "Valid=False", operator)
    assert condition(obj, "Valid")["reason"] == "InvalidSpec"
    assert "spec.steps[1] (later)" in condition(obj, "Valid")["message"]
    assert "nosuchfilter" in condition(obj, "Valid")["message"]
    assert condition(obj, "Ready")["status"] == "False"
    assert "revision 1 keeps running" in condition(obj, "Ready")["message"]
    warnings = eventually(
        lambda: [e for e in events(cluster, namespace, "invalid") if e["type"] == "Warning"], "a Warning", operator
    )
    assert [(e["reason"], "nosuchfilter" in e["message"]) for e in warnings] == [("InvalidSpec", True)]
    assert revisions(operator_release, "invalid") == [1]


def test_a_deleted_sequence_is_finalized_and_marked_deleted(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, operator: OperatorProcess
) -> None:
    cluster, namespace = kubernetes_cluster, operator_release.namespace
    cluster.apply(sequence("deleted"), namespace=namespace)
    eventually(lambda: ready(cluster, namespace, "deleted", 1), "revision 1", operator)

    cluster.kubectl("delete", "sequence", "deleted", "-n", namespace, "--wait=false")

    eventually(lambda: get_sequence(cluster, namespace, "deleted") is None, "the finalizer removed", operator)
    [row] = query(
        operator_release.database_url,
        "SELECT deleted_at IS NOT NULL AS deleted FROM sequences WHERE id = %s",
        sequence_id(namespace, "deleted"),
    )
    assert row == {"deleted": True}


def test_a_restarted_operator_resumes_without_repeating_work(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, tmp_path: Path
) -> None:
    cluster, namespace = kubernetes_cluster, operator_release.namespace
    with running_operator(cluster, operator_release, tmp_path) as first:
        cluster.apply(sequence("restarted"), namespace=namespace)
        cluster.apply(sequence("untouched"), namespace=namespace)
        eventually(lambda: ready(cluster, namespace, "restarted", 1), "restarted Ready", first)
        eventually(lambda: ready(cluster, namespace, "untouched", 1), "untouched Ready", first)
        eventually(lambda: events(cluster, namespace, "untouched"), "untouched's Event", first)

    # Changed while no operator runs: the next one must pick it up.
    cluster.apply(sequence("restarted", paused=True), namespace=namespace)
    with running_operator(cluster, operator_release, tmp_path) as second:
        eventually(lambda: ready(cluster, namespace, "restarted", 2), "the change made while stopped", second)
        # Let the resumed handlers and a refresh or two run over the unchanged Sequence.
        time.sleep(5)

    assert revisions(operator_release, "restarted") == [1, 2]
    assert revisions(operator_release, "untouched") == [1]
    assert [e["reason"] for e in events(cluster, namespace, "untouched")] == ["RevisionStored"]
    assert [e["reason"] for e in events(cluster, namespace, "restarted")] == ["RevisionStored", "RevisionStored"]
