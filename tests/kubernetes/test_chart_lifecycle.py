"""A release's life after `helm install`, against a real API server: `helm upgrade` with changed values,
`helm test`, `helm uninstall` (the CRD kept, as ``crds.keep`` promises).

As in test_chart_install.py, the migration hook Job (pre-install and pre-upgrade) is completed by running
``healingwork migrate`` here with the Job's Pod environment, since no kubelet runs Pods.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kubernetes.conftest import CHART, Release, helm_with_hook
from tests.support.kubernetes import KubernetesCluster
from tests.support.services import scratch_database

pytestmark = pytest.mark.kubernetes

MINIMAL = CHART / "ci" / "minimal-values.yaml"


@pytest.fixture
def release(kubernetes_cluster: KubernetesCluster, sequence_crd: str, postgres_url: str) -> Iterator[Release]:
    """The chart installed with the minimal values in a namespace of its own, its database the test
    PostgreSQL's."""
    with scratch_database(postgres_url) as database_url:
        namespace = kubernetes_cluster.create_namespace("lifecycle")
        installed = Release("hw", namespace, "hw-healingwork")
        result, hook = install(kubernetes_cluster, installed, MINIMAL, f"secrets.databaseUrl={database_url}")
        assert result.returncode == 0, f"helm install failed:\n{result.stderr}\nhook: {hook}"
        yield installed
        kubernetes_cluster.helm("uninstall", installed.name, "-n", namespace, "--ignore-not-found", check=False)


def install(
    cluster: KubernetesCluster, release: Release, values: Path, *sets: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    args: list[str | Path] = ["--values", values, "--take-ownership"]
    for assignment in sets:
        args += ["--set", assignment]
    return helm_with_hook(cluster, "install", release.name, release.namespace, *args)


def test_helm_upgrade_applies_changed_values_after_migrating(
    kubernetes_cluster: KubernetesCluster, release: Release
) -> None:
    cluster = kubernetes_cluster
    result, hook = helm_with_hook(
        cluster,
        "upgrade",
        release.name,
        release.namespace,
        "--reuse-values",
        "--set",
        "intake.replicas=4",
        "--set",
        "config.logLevel=DEBUG",
        "--set",
        "jobs.purge.enabled=false",
    )

    assert result.returncode == 0, f"helm upgrade failed:\n{result.stderr}\nhook: {hook}"
    assert hook, "the pre-upgrade migration hook did not run"
    assert hook[0].startswith("exit 0"), hook
    intake = cluster.get("deployment", f"{release.fullname}-intake", namespace=release.namespace)
    assert intake["spec"]["replicas"] == 4
    config = cluster.get("configmap", release.fullname, namespace=release.namespace)
    assert config["data"]["LOG_LEVEL"] == "DEBUG"
    cronjobs = cluster.kubectl("get", "cronjobs", "-n", release.namespace, "-o", "name").stdout.split()
    assert f"cronjob.batch/{release.fullname}-purge" not in cronjobs
    assert f"cronjob.batch/{release.fullname}-retry-failed" in cronjobs
    history = cluster.helm("history", release.name, "-n", release.namespace, "-o", "json").stdout
    assert '"revision":2' in history.replace(" ", "")
    assert '"status":"deployed"' in history.replace(" ", "")


def test_helm_test_creates_its_pod(kubernetes_cluster: KubernetesCluster, release: Release) -> None:
    """The test Pod is admitted (schema, the ServiceAccount admission, the security context); it cannot
    run without a kubelet, so `helm test` itself gives up waiting for it (its --timeout), and that is all it
    can do here."""
    cluster = kubernetes_cluster
    result = cluster.helm("test", release.name, "-n", release.namespace, "--timeout", "5s", check=False)

    pod = cluster.get("pod", f"{release.fullname}-test-readyz", namespace=release.namespace)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["status"]["phase"] == "Pending"
    assert result.returncode != 0
    assert "context deadline exceeded" in result.stderr


def test_helm_uninstall_removes_the_release_but_keeps_the_crd(
    kubernetes_cluster: KubernetesCluster, release: Release
) -> None:
    cluster = kubernetes_cluster
    sequence = {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": "survivor"},
        "spec": {"trigger": {"all": True}, "steps": [{"name": "hello", "subject": "Hi", "text": "Hello"}]},
    }
    cluster.apply(sequence, namespace=release.namespace)

    cluster.helm("uninstall", release.name, "-n", release.namespace, "--wait", "--timeout", "60s")

    left = cluster.kubectl(
        "get",
        "deployments,services,configmaps,secrets,cronjobs,roles,rolebindings,serviceaccounts",
        "-n",
        release.namespace,
        "-l",
        f"app.kubernetes.io/instance={release.name}",
        "-o",
        "name",
    )
    assert left.stdout.strip() == ""
    crd = cluster.get("crd", "sequences.healingwork.io")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert cluster.get("sequence", "survivor", namespace=release.namespace)["metadata"]["name"] == "survivor"
