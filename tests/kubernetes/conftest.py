"""Fixtures and helpers of the ``kubernetes`` suite: the API server (tests/support/kubernetes.py), the
Sequence CRD in it, Helm releases of the chart, and what stands in for the absent kubelet.

No kubelet runs, so no Pod ever runs. Where the chart's install depends on one — the pre-install/
pre-upgrade migration hook Job, which Helm waits for — ``complete_hook_job`` does what the kubelet and
the Job controller would: it runs the container's command (``healingwork migrate``) here, with the
environment the Pod would get (its ``env``, Secret references resolved through the API server), against
the test PostgreSQL, then marks the Job complete through its status subresource.
"""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kubernetes import KubernetesCluster, kubernetes_cluster

__all__ = ["kubernetes_cluster"]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "healingwork"
CRD = ROOT / "k8s" / "crds" / "sequences.healingwork.io.yaml"
HEALINGWORK = Path(sys.executable).parent / "healingwork"
HOOK_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def sequence_crd(kubernetes_cluster: KubernetesCluster) -> str:
    """The Sequence CRD of k8s/crds/, applied with kubectl and Established (the CEL rules compiled)."""
    kubernetes_cluster.kubectl("apply", "-f", CRD)
    kubernetes_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/sequences.healingwork.io")
    return "sequences.healingwork.io"


def container_env(cluster: KubernetesCluster, namespace: str, pod_spec: dict[str, Any]) -> dict[str, str]:
    """The environment the first container of ``pod_spec`` would get: its ``envFrom`` ConfigMaps and
    Secrets and its ``env`` entries, references resolved through the API server as the kubelet does."""
    container = pod_spec["containers"][0]
    env: dict[str, str] = {}

    def data(kind: str, name: str) -> dict[str, str]:
        obj = cluster.get(kind, name, namespace=namespace)
        if kind == "secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(data("configmap", source["configMapRef"]["name"]))
        if "secretRef" in source:
            env.update(data("secret", source["secretRef"]["name"]))
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        reference = entry.get("valueFrom") or {}
        if "secretKeyRef" in reference:
            ref = reference["secretKeyRef"]
            env[entry["name"]] = data("secret", ref["name"])[ref["key"]]
        elif "configMapKeyRef" in reference:
            ref = reference["configMapKeyRef"]
            env[entry["name"]] = data("configmap", ref["name"])[ref["key"]]
    return env


def run_container_locally(
    cluster: KubernetesCluster, namespace: str, pod_spec: dict[str, Any], extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the first container's ``healingwork`` command of ``pod_spec`` here, with its environment."""
    container = pod_spec["containers"][0]
    env = {"PATH": str(HEALINGWORK.parent), **container_env(cluster, namespace, pod_spec), **(extra_env or {})}
    return subprocess.run(
        [str(HEALINGWORK), *container.get("args", [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=HOOK_TIMEOUT_S,
        check=False,
    )


def mark_job_complete(cluster: KubernetesCluster, namespace: str, job: str) -> None:
    """Write the status the Job controller writes when the Job's one Pod succeeded. The API server
    requires startTime, completionTime, the succeeded count and SuccessCriteriaMet before Complete."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {"status": "True", "lastProbeTime": now, "lastTransitionTime": now}
    status = {
        "status": {
            "startTime": now,
            "completionTime": now,
            "succeeded": 1,
            "ready": 0,
            "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": [
                {**condition, "type": "SuccessCriteriaMet", "reason": "CompletionsReached"},
                {**condition, "type": "Complete", "reason": "CompletionsReached"},
            ],
        }
    }
    cluster.kubectl(
        "patch", "job", job, "--namespace", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )


def complete_hook_job(cluster: KubernetesCluster, namespace: str, job: str, ran: list[str]) -> None:
    """Wait for hook Job ``job``, run its container here (see the module docstring), mark it complete.

    The container's output is appended to ``ran``; a failing command marks nothing (Helm then times out
    and the test fails with the command's output).
    """
    deadline = time.monotonic() + HOOK_TIMEOUT_S
    while True:
        found = cluster.kubectl("get", "job", job, "--namespace", namespace, "-o", "json", check=False)
        if found.returncode == 0:
            break
        if time.monotonic() > deadline:
            ran.append(f"the hook Job {namespace}/{job} never appeared: {found.stderr}")
            return
        time.sleep(0.2)
    spec = json.loads(found.stdout)["spec"]["template"]["spec"]
    try:
        result = run_container_locally(cluster, namespace, spec)
        ran.append(f"exit {result.returncode}\n{result.stdout}{result.stderr}")
        if result.returncode == 0:
            mark_job_complete(cluster, namespace, job)
    except BaseException as error:  # in a thread: hand any failure to the test through `ran`
        ran.append(f"standing in for the kubelet failed: {error!r}")


@dataclass(frozen=True)
class Release:
    """An installed Helm release of the chart."""

    name: str
    namespace: str
    fullname: str

    def manifest(self, cluster: KubernetesCluster) -> list[dict[str, Any]]:
        """The objects of the release (``helm get manifest``), hooks excluded."""
        text = cluster.helm("get", "manifest", self.name, "--namespace", self.namespace).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]


def helm_with_hook(
    cluster: KubernetesCluster, command: str, release: str, namespace: str, *args: str | Path, migrate: bool = True
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``helm install|upgrade RELEASE CHART ARGS``, completing the migration hook Job meanwhile.

    The Job is named ``<release>-healingwork-migrate`` (the chart's fullname for a release name without
    "healingwork"). Returns helm's result and what the hook's command printed.
    """
    ran: list[str] = []
    worker = None
    if migrate:
        job = f"{release}-healingwork-migrate"
        worker = threading.Thread(target=complete_hook_job, args=(cluster, namespace, job, ran), daemon=True)
        worker.start()
    result = cluster.helm(
        command, release, CHART, "--namespace", namespace, "--timeout", "150s", *args, check=False, timeout=200
    )
    if worker is not None:
        worker.join(HOOK_TIMEOUT_S)
    return result, ran


def valid_sequence(name: str, **spec: Any) -> dict[str, Any]:
    """A valid Sequence of one step, with ``spec`` keys (``steps`` too) replaced."""
    return {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": name},
        "spec": {
            "trigger": {"sources": ["website"]},
            "steps": [{"name": "hello", "delay": "0s", "subject": "Hi", "text": "Hello"}],
            **spec,
        },
    }
