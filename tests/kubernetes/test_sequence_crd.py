"""The Sequence CRD in a real API server: the examples are accepted, broken Sequences are refused with
the CRD's own messages (OpenAPI schema and CEL rules, evaluated by kube-apiserver), and ``kubectl get
seq`` prints the CRD's columns."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from proto.sequence import MAX_BODY_CHARACTERS, MAX_INLINE_CHARACTERS
from tests.kubernetes.conftest import valid_sequence
from tests.support.kubernetes import KubernetesCluster

pytestmark = pytest.mark.kubernetes

EXAMPLES = Path(__file__).resolve().parents[2] / "k8s" / "examples"
OPERATOR_DOCS = Path(__file__).resolve().parents[2] / "docs" / "operator.md"


def step(**fields: Any) -> dict[str, Any]:
    return {"name": "hello", "subject": "Hi", **fields}


# Each broken Sequence and the message of the CRD that refuses it.
BROKEN: dict[str, tuple[dict[str, Any], str]] = {
    "trigger-without-sources": (valid_sequence("t", trigger={}), "a trigger needs sources, tags, or all: true"),
    "trigger-all-and-sources": (
        valid_sequence("t", trigger={"all": True, "sources": ["website"]}),
        "spec.trigger.all: Invalid value: all: true matches every lead; leave sources and tags out",
    ),
    "duplicate-step-names": (
        valid_sequence("t", steps=[step(text="a"), step(text="b")]),
        'spec.steps[1]: Duplicate value: {"name":"hello"}',
    ),
    "step-without-body": (valid_sequence("t", steps=[step()]), "a step needs html, text or templateRef"),
    "html-inline-and-referenced": (
        valid_sequence("t", steps=[step(html="<p>x</p>", templateRef={"configMap": "c", "htmlKey": "k"})]),
        "spec.steps[0].html: Invalid value: give the HTML body inline or as templateRef.htmlKey, not both",
    ),
    "text-inline-and-referenced": (
        valid_sequence("t", steps=[step(text="x", templateRef={"configMap": "c", "textKey": "k"})]),
        "spec.steps[0].text: Invalid value: give the text body inline or as templateRef.textKey, not both",
    ),
    "template-ref-without-key": (
        valid_sequence("t", steps=[step(templateRef={"configMap": "c"})]),
        "a templateRef needs htmlKey or textKey",
    ),
    "window-across-midnight": (
        valid_sequence("t", sendWindow={"start": "22:00", "end": "06:00"}),
        "spec.sendWindow.end: Invalid value: the window's start (22:00) must be before its end (06:00)",
    ),
    "fallback-timezone-lead": (
        valid_sequence("t", sendWindow={"fallbackTimezone": "lead"}),
        "spec.sendWindow.fallbackTimezone: Invalid value: fallbackTimezone must be an IANA time zone, not lead",
    ),
    "bad-delay": (valid_sequence("t", steps=[step(text="x", delay="2 days")]), "spec.steps[0].delay: Invalid value"),
    "bad-revision-policy": (
        valid_sequence("t", revisionPolicy="Sometimes"),
        'spec.revisionPolicy: Unsupported value: "Sometimes"',
    ),
    "missing-steps": ({**valid_sequence("t"), "spec": {"trigger": {"all": True}}}, "spec.steps: Required value"),
    "bad-unsubscribe-scope": (
        valid_sequence("t", unsubscribeScope="Everything"),
        'spec.unsubscribeScope: Unsupported value: "Everything"',
    ),
    "display-name-of-two-lines": (valid_sequence("t", displayName="Tips\nBcc: x@example.com"), "spec.displayName"),
    "double-opt-in-not-a-boolean": (valid_sequence("t", doubleOptIn="yes"), "spec.doubleOptIn"),
    "step-without-name": (
        valid_sequence("t", steps=[{"subject": "Hi", "text": "x"}]),
        "spec.steps[0].name: Required value",
    ),
    "html-over-its-maximum": (
        valid_sequence("t", steps=[step(html="x" * (MAX_BODY_CHARACTERS + 1))]),
        "spec.steps[0].html: Too long: may not be more than 131072 bytes",
    ),
    "inline-bodies-over-the-total": (
        valid_sequence("t", steps=[step(name=f"s{i}", html="x" * 100_000) for i in range(2)]),
        "spec.steps: Invalid value: the inline subjects and bodies of all steps exceed 196608 characters in total;"
        " keep large bodies in ConfigMaps (templateRef)",
    ),
}


def test_the_examples_are_accepted(kubernetes_cluster: KubernetesCluster, sequence_crd: str) -> None:
    result = kubernetes_cluster.kubectl("apply", "-f", EXAMPLES)
    created = sorted(line.split()[0] for line in result.stdout.splitlines())
    assert created == [
        "configmap/re-engagement-templates",
        "sequence.healingwork.io/re-engagement",
        "sequence.healingwork.io/webinar-follow-up",
        "sequence.healingwork.io/welcome",
        "sequence.healingwork.io/welcome-ab",
    ]
    # The defaults of the schema are applied by the API server.
    welcome = kubernetes_cluster.get("sequence", "welcome", namespace="default")
    assert welcome["spec"]["revisionPolicy"] == "Latest"
    assert welcome["spec"]["requireConsent"] is True
    assert welcome["spec"]["unsubscribeScope"] == "Global"
    assert welcome["spec"]["doubleOptIn"] is False
    assert "displayName" not in welcome["spec"]


@pytest.mark.parametrize(("manifest", "message"), BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_sequence_is_refused_with_the_crds_message(
    kubernetes_cluster: KubernetesCluster, sequence_crd: str, manifest: dict[str, Any], message: str
) -> None:
    namespace = "default"
    result = kubernetes_cluster.apply(copy.deepcopy(manifest), namespace=namespace, check=False)
    assert result.returncode != 0, f"the API server accepted a broken Sequence:\n{result.stdout}"
    assert "is invalid" in result.stderr
    assert message in result.stderr
    missing = kubernetes_cluster.kubectl("get", "sequence", "t", "--namespace", namespace, check=False)
    assert "NotFound" in missing.stderr


def test_kubectl_get_seq_prints_the_crds_columns(kubernetes_cluster: KubernetesCluster, sequence_crd: str) -> None:
    namespace = kubernetes_cluster.create_namespace("columns")
    kubernetes_cluster.apply(valid_sequence("columns", paused=True), namespace=namespace)
    status = {
        "status": {
            "steps": 1,
            "revision": 3,
            "activeEnrollments": 5,
            "completedEnrollments": 2,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Paused",
                    "message": "revision 3 is paused",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    }
    kubernetes_cluster.kubectl(
        "patch", "seq", "columns", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )

    plain = kubernetes_cluster.kubectl("get", "seq", "-n", namespace).stdout.splitlines()
    assert plain[0].split() == ["NAME", "READY", "STEPS", "ACTIVE", "COMPLETED", "AGE"]
    assert plain[1].split()[:5] == ["columns", "True", "1", "5", "2"]
    wide = kubernetes_cluster.kubectl("get", "seq", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == [
        "NAME",
        "READY",
        "STEPS",
        "ACTIVE",
        "COMPLETED",
        "PAUSED",
        "REVISION",
        "REASON",
        "MESSAGE",
        "AGE",
    ]
    assert wide[1].split()[:8] == ["columns", "True", "1", "5", "2", "true", "3", "Paused"]
    assert "revision 3 is paused" in wide[1]


def largest_sequence(name: str, extra_characters: int = 0) -> dict[str, Any]:
    """A Sequence at every size limit of the CRD at once, in the worst case for its stored size: 100 steps
    with the longest names, delays and templateRefs, and inline subjects and bodies of exactly
    MAX_INLINE_CHARACTERS (plus ``extra_characters``) made of ``<``, which JSON stores as ``\\u003c``
    (6 bytes a character)."""
    count = 100
    per_step = MAX_INLINE_CHARACTERS // count
    steps = [
        {
            "name": f"s{index:02d}-" + "x" * 59,
            "delay": "1d",
            "subject": "<" * 100,
            "html": "<" * (per_step - 100),
            "templateRef": {"configMap": "c" * 253, "textKey": "k" * 253},
        }
        for index in range(count)
    ]
    steps[0]["html"] += "<" * (MAX_INLINE_CHARACTERS - per_step * count + extra_characters)
    return valid_sequence(name, trigger={"tags": ["t" * 64] * 1}, steps=steps)


def server_side_apply(cluster: KubernetesCluster, manifest: dict[str, Any], namespace: str) -> Any:
    # Server-side apply: client-side `kubectl apply` would also copy the whole object into the
    # last-applied-configuration annotation, which caps it at 256 KiB (docs/operator.md, "Size limits").
    return cluster.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False
    )


def test_a_sequence_at_the_size_limits_is_stored_by_the_api_server(
    kubernetes_cluster: KubernetesCluster, sequence_crd: str
) -> None:
    namespace = kubernetes_cluster.create_namespace("limits")

    result = server_side_apply(kubernetes_cluster, largest_sequence("largest"), namespace)

    assert result.returncode == 0, result.stderr
    stored = kubernetes_cluster.get("sequence", "largest", namespace=namespace)
    assert len(stored["spec"]["steps"]) == 100
    assert sum(len(s["subject"]) + len(s["html"]) for s in stored["spec"]["steps"]) == MAX_INLINE_CHARACTERS


def test_a_sequence_one_character_over_the_limit_is_refused_naming_the_steps(
    kubernetes_cluster: KubernetesCluster, sequence_crd: str
) -> None:
    namespace = kubernetes_cluster.create_namespace("limits")

    result = server_side_apply(kubernetes_cluster, largest_sequence("too-large", extra_characters=1), namespace)

    assert result.returncode != 0
    assert (
        f"spec.steps: Invalid value: the inline subjects and bodies of all steps exceed {MAX_INLINE_CHARACTERS}"
        " characters in total; keep large bodies in ConfigMaps (templateRef)"
    ) in result.stderr
    assert "etcdserver" not in result.stderr
    assert "NotFound" in kubernetes_cluster.kubectl("get", "seq", "too-large", "-n", namespace, check=False).stderr


def documented_refusal() -> tuple[str, str]:
    """The manifest and the output of the first example of docs/operator.md, "What kubectl shows"."""
    section = OPERATOR_DOCS.read_text().split("## What kubectl shows", 1)[1]
    [block] = re.findall(r"```\n(.*?)```", section, flags=re.DOTALL)[:1]
    manifest, output = block.split("$ cat spring-offer.yaml\n", 1)[1].split(
        "$ kubectl apply -n marketing -f spring-offer.yaml\n"
    )
    return manifest, output


def test_the_docs_show_a_refused_sequence_as_kubectl_prints_it(
    kubernetes_cluster: KubernetesCluster, sequence_crd: str
) -> None:
    manifest, documented = documented_refusal()
    namespace = kubernetes_cluster.create_namespace("docs")

    result = kubernetes_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest, check=False)

    assert result.returncode != 0
    printed = (result.stdout + result.stderr).splitlines()
    # The same lines; the API server lists the problems in no fixed order.
    assert (printed[0], sorted(printed[1:])) == (documented.splitlines()[0], sorted(documented.splitlines()[1:]))
