"""`helm install` of the chart into a real API server, once per ``charts/healingwork/ci/*-values.yaml``.

Every object of the release must be admitted by kube-apiserver: server-side schema validation of every
built-in kind, the Sequence CRD with its CEL rules compiled and cost-checked, RBAC objects created by an
admin, and a strict server-side dry run of the rendered manifest (unknown or duplicate fields fail).

No kubelet runs: the pre-install migration hook Job is completed by running its command,
``healingwork migrate``, here with the Job's Pod environment against the test PostgreSQL, and marking the
Job complete through its status subresource (tests/kubernetes/conftest.py). The release's
``secrets.databaseUrl`` (or the existing Secret's DATABASE_URL) points at that PostgreSQL; every other
value is the values file's.

The Sequence CRD is cluster-wide and each release renders it, so each install takes it over
(``--take-ownership``), as a second release of the chart with ``crds.enabled`` would have to. The values
file with monitoring on (production) gets a minimal copy of the Prometheus Operator's CRDs
(tests/kubernetes/monitoring-crds.yaml) installed first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.kubernetes.conftest import CHART, Release, helm_with_hook
from tests.support.kubernetes import KubernetesCluster
from tests.support.services import scratch_database

pytestmark = pytest.mark.kubernetes

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
MONITORING_CRDS = Path(__file__).parent / "monitoring-crds.yaml"
CLUSTER_WIDE_KINDS = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
HMAC_SECRET = "3f9c1e7a5b2d48c6a0e1f7b9d3c5a7e1b2d4f6a8c0e2b4d6f8a1c3e5b7d9f0a2"
SUPPRESSION_HASH_KEY = "6b2e9d4a1f7c3e8b5a0d2f6c9e1b4a7d3f8c0e5b2a9d6f1c4e7b0a3d8f5c2e9b"


def prepare_namespace(cluster: KubernetesCluster, values: dict[str, Any], database_url: str) -> tuple[str, list[str]]:
    """A namespace for the release, what its values need beforehand (watched namespaces, the existing
    Secret, the monitoring CRDs), and the helm arguments pointing the release at ``database_url``."""
    namespace = cluster.create_namespace("install")
    for watched in (values.get("operator") or {}).get("watchNamespaces") or []:
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": watched}})
    monitoring = values.get("metrics") or {}
    if any((monitoring.get(kind) or {}).get("enabled") for kind in ("serviceMonitor", "prometheusRule")):
        cluster.kubectl("apply", "-f", MONITORING_CRDS)
        for crd in ("servicemonitors", "prometheusrules"):
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}.monitoring.coreos.com")
    existing = (values.get("secrets") or {}).get("existingSecret")
    if existing:
        cluster.kubectl(
            "create",
            "secret",
            "generic",
            existing,
            "--namespace",
            namespace,
            f"--from-literal=DATABASE_URL={database_url}",
            f"--from-literal=HMAC_SECRET={HMAC_SECRET}",
            f"--from-literal=SUPPRESSION_HASH_KEY={SUPPRESSION_HASH_KEY}",
            "--from-literal=SMTP_URL=smtp://relay.example.com:587",
        )
        return namespace, []
    return namespace, ["--set", f"secrets.databaseUrl={database_url}"]


def in_namespace(manifest: dict[str, Any], namespace: str) -> dict[str, Any]:
    """``manifest`` with the namespace Helm gives it: its own (the Roles of watched namespaces), else the
    release's; cluster-wide kinds have none."""
    if manifest["kind"] not in CLUSTER_WIDE_KINDS:
        manifest["metadata"].setdefault("namespace", namespace)
    return manifest


def migrated_tables(database_url: str) -> set[str]:
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {str(row[0]) for row in rows}


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.name.removesuffix("-values.yaml"))
def test_helm_install_is_admitted_by_the_api_server(
    kubernetes_cluster: KubernetesCluster, sequence_crd: str, postgres_url: str, values_file: Path
) -> None:
    cluster = kubernetes_cluster
    values = yaml.safe_load(values_file.read_text())
    with scratch_database(postgres_url) as database_url:
        namespace, database_args = prepare_namespace(cluster, values, database_url)
        release = Release("hw", namespace, "hw-healingwork")
        result, hook = helm_with_hook(
            cluster, "install", release.name, namespace, "--values", values_file, *database_args, "--take-ownership"
        )
        assert result.returncode == 0, f"helm install failed:\n{result.stderr}\nmigration hook: {hook}"
        assert hook, "the migration hook did not run"
        assert hook[0].startswith("exit 0"), hook
        assert {"sequences", "leads", "outbox"} <= migrated_tables(database_url)

        manifest = [in_namespace(doc, namespace) for doc in release.manifest(cluster)]
        rendered = yaml.safe_dump_all(manifest)
        found = json.loads(cluster.kubectl("get", "-f", "-", "-o", "json", input=rendered).stdout)
        admitted = {(item["kind"], item["metadata"]["name"]) for item in found["items"]}
        assert admitted == {(doc["kind"], doc["metadata"]["name"]) for doc in manifest}

        # Strict field validation: an unknown or duplicate field is an error, not a warning.
        cluster.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "--force-conflicts",
            "--field-manager=strict-check",
            "-f",
            "-",
            input=rendered,
        )
        # The hook's objects are gone once it succeeded (hook-delete-policy hook-succeeded).
        leftovers = cluster.kubectl(
            "get", "job,secret", "--namespace", namespace, "-l", "app.kubernetes.io/component=migrate", "-o", "name"
        )
        assert leftovers.stdout.strip() == ""
        cluster.helm("uninstall", release.name, "--namespace", namespace, "--wait", "--timeout", "60s")
