"""The CRD bounds a step's delay at 365 days (kube-apiserver evaluates the rule at ``kubectl apply``),
the same bound services.common.durations enforces for files and for a CRD installed without the rule."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kubernetes.conftest import valid_sequence
from tests.support.kubernetes import KubernetesCluster

pytestmark = pytest.mark.kubernetes


def with_delay(name: str, delay: str) -> dict[str, Any]:
    return valid_sequence(name, steps=[{"name": "hello", "delay": delay, "subject": "Hi", "text": "Hello"}])


@pytest.mark.parametrize("delay", ["999999999d", "9" * 31 + "s", "366d", "365d1s", "8761h"])
def test_a_delay_beyond_365_days_is_refused_at_apply(
    kubernetes_cluster: KubernetesCluster, sequence_crd: str, delay: str
) -> None:
    namespace = kubernetes_cluster.create_namespace("delay")
    result = kubernetes_cluster.apply(with_delay("too-long", delay), namespace=namespace, check=False)

    assert result.returncode != 0, f"the API server accepted delay {delay}:\n{result.stdout}"
    assert "spec.steps[0].delay" in result.stderr
    assert "a step waits at most 365d (8760h) after the previous one" in result.stderr
    missing = kubernetes_cluster.kubectl("get", "sequence", "too-long", "--namespace", namespace, check=False)
    assert "NotFound" in missing.stderr


@pytest.mark.parametrize("delay", ["365d", "8760h", "364d23h59m60s", "0s", "1h30m"])
def test_a_delay_up_to_365_days_is_accepted(
    kubernetes_cluster: KubernetesCluster, sequence_crd: str, delay: str
) -> None:
    namespace = kubernetes_cluster.create_namespace("delay")

    kubernetes_cluster.apply(with_delay("long-enough", delay), namespace=namespace)

    stored = kubernetes_cluster.get("sequence", "long-enough", namespace=namespace)
    assert stored["spec"]["steps"][0]["delay"] == delay
