"""The operator started before its CRD, as a real process against a real API server of this module alone
(the session's one has the CRD installed for every other test; this one must start without it).

docs/operator.md "A restart" and docs/operations.md "HealingworkOperatorCrdNotServed" promise: until the
API server serves sequences.healingwork.io/v1alpha1, ``/readyz`` answers 503 and
``healingwork_operator_crd_served`` is 0 while ``/healthz`` stays alive (a restart would not help);
once the CRD is installed ``/healthz`` fails, because kopf looks for the resource only at start-up, so
the kubelet restarts it; the restarted operator is ready and reconciles Sequences. No kubelet runs here:
the test is the kubelet, and restarts the process itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kubernetes.conftest import CRD, Release, helm_with_hook
from tests.kubernetes.test_operator import (
    OperatorRelease,
    eventually,
    get_sequence,
    ready,
    release_values,
    running_operator,
    sequence,
)
from tests.kubernetes.test_operator_failures import http_get
from tests.support.kubernetes import KubernetesCluster, running_cluster
from tests.support.services import scratch_database

pytestmark = pytest.mark.kubernetes

NOT_SERVED_LOG = "the API server does not serve sequences.healingwork.io/v1alpha1: install the CRD"
SWEEP_WAITS_LOG = "the sweep of deleted Sequences waits for the CRD"


@pytest.fixture(scope="module")
def cluster_without_crd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubernetesCluster]:
    """An etcd + kube-apiserver of this module alone, the Sequence CRD not installed."""
    try:
        with running_cluster(tmp_path_factory.mktemp("kubernetes-no-crd", numbered=True)) as cluster:
            yield cluster
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="module")
def release_without_crd(cluster_without_crd: KubernetesCluster, postgres_url: str) -> Iterator[OperatorRelease]:
    """The chart installed with ``crds.enabled=false`` (the CRD managed elsewhere, and not there yet)."""
    cluster = cluster_without_crd
    with scratch_database(postgres_url) as database_url:
        namespace = cluster.create_namespace("no-crd")
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
            "crds.enabled=false",
        )
        assert result.returncode == 0, f"helm install failed:\n{result.stderr}\nhook: {hook}"
        assert cluster.kubectl("get", "crd", "sequences.healingwork.io", check=False).returncode != 0
        deployment = cluster.get("deployment", f"{release.fullname}-operator", namespace=namespace)
        yield OperatorRelease(release, database_url, deployment["spec"]["template"]["spec"])


def crd_served_metric(port: int) -> str:
    """The sample line of ``healingwork_operator_crd_served`` on /metrics."""
    text = http_get(port, "/metrics")[1]
    return next((line for line in text.splitlines() if line.startswith("healingwork_operator_crd_served ")), "")


def test_an_operator_started_before_its_crd_is_unready_then_asks_for_a_restart_and_works_after_it(
    cluster_without_crd: KubernetesCluster, release_without_crd: OperatorRelease, tmp_path: Path
) -> None:
    cluster, namespace = cluster_without_crd, release_without_crd.namespace
    # The restart below is the kubelet's answer to this probe failing: the chart must declare it.
    container = release_without_crd.pod_spec["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    with running_operator(cluster, release_without_crd, tmp_path) as operator:
        # Its check ran and found no resource: not ready, the gauge says why, alive (a restart won't help).
        eventually(lambda: NOT_SERVED_LOG in operator.log(), "the log line about the missing CRD", operator)
        eventually(lambda: SWEEP_WAITS_LOG in operator.log(), "the sweep's pass at start-up", operator)
        assert "Traceback" not in operator.log(), operator.log()  # a missing CRD is no crash
        assert http_get(operator.health_port, "/readyz")[0] == 503
        assert crd_served_metric(operator.health_port) == "healingwork_operator_crd_served 0.0"
        assert http_get(operator.health_port, "/healthz")[0] == 200

        cluster.kubectl("apply", "-f", CRD)
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/sequences.healingwork.io")
        cluster.apply(sequence("before-restart"), namespace=namespace)

        # kopf will not watch a resource that appeared after start-up: liveness fails so the kubelet restarts it.
        eventually(lambda: http_get(operator.health_port, "/healthz")[0] == 503, "/healthz 503", operator)
        assert crd_served_metric(operator.health_port) == "healingwork_operator_crd_served 1.0"
        assert http_get(operator.health_port, "/readyz")[0] == 200
        # What the restart repairs: the Sequence applied meanwhile was never reconciled.
        assert "status" not in (get_sequence(cluster, namespace, "before-restart") or {}), operator.log()

    # The kubelet's restart: a new process, which finds the resource at start-up.
    with running_operator(cluster, release_without_crd, tmp_path) as operator:
        eventually(lambda: http_get(operator.health_port, "/readyz")[0] == 200, "/readyz 200", operator)
        assert crd_served_metric(operator.health_port) == "healingwork_operator_crd_served 1.0"
        eventually(lambda: ready(cluster, namespace, "before-restart", 1), "the earlier Sequence Ready", operator)
        cluster.apply(sequence("after-restart"), namespace=namespace)
        eventually(lambda: ready(cluster, namespace, "after-restart", 1), "a new Sequence Ready", operator)
        assert http_get(operator.health_port, "/healthz")[0] == 200
