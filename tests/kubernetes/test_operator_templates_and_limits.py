"""The operator against a real API server (see tests/kubernetes/test_operator.py for the set-up) on two
subjects: template ConfigMaps (only labelled ones are read; an edit re-reconciles the Sequences that
reference it at once, not on the refresh timer) and size (a Sequence at the CRD's limits reconciles,
because kopf's diff base is a digest, not a copy of the spec in an annotation capped at 256 KiB)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proto.sequence import MAX_BODY_CHARACTERS, MAX_INLINE_CHARACTERS
from tests.kubernetes.test_operator import (
    OperatorProcess,
    OperatorRelease,
    condition,
    events,
    eventually,
    get_sequence,
    operator_release,
    ready,
    revisions,
    running_operator,
    sequence,
)
from tests.support.kubernetes import KubernetesCluster

pytestmark = pytest.mark.kubernetes

__all__ = ["operator_release"]  # the module-scoped fixture, shared with test_operator.py

TEMPLATES_LABEL = {"healingwork.io/templates": "true"}


@pytest.fixture
def operator_without_refresh(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator with its refresh timer at an hour: whatever happens within a test's minute comes
    from the handlers, not from the timer."""
    extra = {"OPERATOR_REFRESH_INTERVAL_S": "3600"}
    with running_operator(kubernetes_cluster, operator_release, tmp_path, extra) as process:
        yield process


def templates(name: str, html: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": TEMPLATES_LABEL if labels is None else labels},
        "data": {"hello.html": html},
    }


def templated_sequence(name: str, config_map: str) -> dict[str, Any]:
    manifest = sequence(name)
    manifest["spec"]["steps"][0] = {
        "name": "hello",
        "subject": "Hi",
        "templateRef": {"configMap": config_map, "htmlKey": "hello.html"},
    }
    return manifest


def test_a_config_map_edit_becomes_a_new_revision_without_waiting_for_the_refresh(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, operator_without_refresh: OperatorProcess
) -> None:
    cluster, namespace, operator = kubernetes_cluster, operator_release.namespace, operator_without_refresh
    cluster.apply(templates("edited", "<p>Hello</p>"), namespace=namespace)
    cluster.apply(templated_sequence("edited-templates", "edited"), namespace=namespace)
    eventually(lambda: ready(cluster, namespace, "edited-templates", 1), "revision 1", operator)

    cluster.apply(templates("edited", "<p>Welcome back</p>"), namespace=namespace)

    eventually(lambda: revisions(operator_release, "edited-templates") == [1, 2], "revision 2 from the edit", operator)
    obj = eventually(
        lambda: (o := get_sequence(cluster, namespace, "edited-templates")) and o["status"].get("revision") == 2 and o,
        "status.revision 2",
        operator,
    )
    assert condition(obj, "Ready")["status"] == "True"
    stored = eventually(
        lambda: [e for e in events(cluster, namespace, "edited-templates") if "revision 2" in e["message"]],
        "the RevisionStored Event of revision 2",
        operator,
    )
    assert [(e["type"], e["reason"]) for e in stored] == [("Normal", "RevisionStored")]


def test_a_broken_template_in_an_edited_config_map_gives_a_warning_event(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, operator_without_refresh: OperatorProcess
) -> None:
    cluster, namespace, operator = kubernetes_cluster, operator_release.namespace, operator_without_refresh
    cluster.apply(templates("broken", "<p>Hello</p>"), namespace=namespace)
    cluster.apply(templated_sequence("broken-templates", "broken"), namespace=namespace)
    eventually(lambda: ready(cluster, namespace, "broken-templates", 1), "revision 1", operator)

    cluster.apply(templates("broken", "<p>{{ lead.first_name | nosuchfilter }}</p>"), namespace=namespace)

    warnings = eventually(
        lambda: [e for e in events(cluster, namespace, "broken-templates") if e["type"] == "Warning"],
        "a Warning Event",
        operator,
    )
    assert [(w["reason"], "nosuchfilter" in w["message"]) for w in warnings] == [("InvalidSpec", True)]
    obj = eventually(
        lambda: (
            (o := get_sequence(cluster, namespace, "broken-templates"))
            and condition(o, "Valid").get("status") == "False"
            and o
        ),
        "Valid=False",
        operator,
    )
    assert "spec.steps[0] (hello)" in condition(obj, "Valid")["message"]
    assert "revision 1 keeps running" in condition(obj, "Ready")["message"]
    assert revisions(operator_release, "broken-templates") == [1]


def test_an_unlabelled_config_map_is_not_read_and_the_status_names_the_label(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, operator_without_refresh: OperatorProcess
) -> None:
    cluster, namespace, operator = kubernetes_cluster, operator_release.namespace, operator_without_refresh
    cluster.apply(templates("unlabelled", "<p>Hello</p>", labels={}), namespace=namespace)
    cluster.apply(templated_sequence("unlabelled-templates", "unlabelled"), namespace=namespace)

    obj = eventually(
        lambda: (
            (o := get_sequence(cluster, namespace, "unlabelled-templates"))
            and condition(o, "Valid").get("status") == "False"
            and o
        ),
        "Valid=False",
        operator,
    )
    assert condition(obj, "Valid")["message"] == (
        f"spec.steps[0].templateRef.configMap: ConfigMap {namespace}/unlabelled not found"
        " (only ConfigMaps labelled healingwork.io/templates=true are read)"
    )

    # Labelling it is a change the operator sees: the Sequence becomes valid without being touched.
    cluster.kubectl("label", "configmap", "unlabelled", "-n", namespace, "healingwork.io/templates=true")
    eventually(lambda: ready(cluster, namespace, "unlabelled-templates", 1), "Ready once labelled", operator)
    assert revisions(operator_release, "unlabelled-templates") == [1]


def large_sequence(name: str, subject: str = "Hello") -> dict[str, Any]:
    """Inline bodies of exactly MAX_INLINE_CHARACTERS in all, mostly Japanese: as JSON with escaped
    non-ASCII (kopf's default diff base annotation) they take about five times that, far over the 256 KiB
    all annotations of an object may take; stored by the API server, about three bytes a character."""
    count = 2 + MAX_INLINE_CHARACTERS // MAX_BODY_CHARACTERS
    per_step = MAX_INLINE_CHARACTERS // count
    body = "<p>{{ lead.first_name or 'お客様' }}さん、こんにちは。新しいお知らせをお届けします。</p>\n"
    steps = []
    for index in range(count):
        characters = per_step - len(subject) + (MAX_INLINE_CHARACTERS - per_step * count if index == 0 else 0)
        html = body * (characters // len(body)) + "。" * (characters % len(body))
        steps.append({"name": f"step-{index}", "delay": f"{index}d", "subject": subject, "html": html})
    manifest = sequence(name, steps=steps)
    assert sum(len(s["subject"]) + len(s["html"]) for s in steps) == MAX_INLINE_CHARACTERS
    return manifest


def test_a_sequence_at_the_size_limit_reconciles_ready_and_its_edits_are_seen(
    kubernetes_cluster: KubernetesCluster, operator_release: OperatorRelease, operator_without_refresh: OperatorProcess
) -> None:
    cluster, namespace, operator = kubernetes_cluster, operator_release.namespace, operator_without_refresh

    def server_side_apply(manifest: dict[str, Any]) -> None:
        # Server-side: client-side apply's own last-applied annotation would be over 256 KiB.
        cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    server_side_apply(large_sequence("largest"))

    def handled() -> dict[str, Any] | None:
        # kopf stores its diff base once every handler is done, in a patch after the status.
        obj = ready(cluster, namespace, "largest", 1)
        return obj if obj and "healingwork.io/last-handled-digest" in obj["metadata"].get("annotations", {}) else None

    obj = eventually(handled, "the largest Sequence Ready and its diff base stored", operator)
    annotations = obj["metadata"]["annotations"]
    assert "kopf.zalando.org/last-handled-configuration" not in annotations
    assert len(annotations["healingwork.io/last-handled-digest"]) < 300
    assert sum(len(value) for value in annotations.values()) < 4096

    server_side_apply(large_sequence("largest", subject="Hallo"))

    eventually(lambda: ready(cluster, namespace, "largest", 2), "the edit of the largest Sequence", operator)
    assert revisions(operator_release, "largest") == [1, 2]
    # kopf's default storage fails here: its annotation is refused (422) and kopf retries without end.
    assert "UnprocessableEntity" not in operator.log()
