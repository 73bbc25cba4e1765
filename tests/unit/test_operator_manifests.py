"""The operator's RBAC manifest is valid Kubernetes and grants exactly what docs/operator.md lists."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "k8s" / "operator" / "rbac.yaml"


def test_the_rbac_manifest_validates_against_the_kubernetes_schemas() -> None:
    for document in yaml.safe_load_all(RBAC.read_text()):
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_the_operator_role_is_least_privilege() -> None:
    [role] = [d for d in yaml.safe_load_all(RBAC.read_text()) if d["kind"] == "Role"]
    grants = {
        (rule["apiGroups"][0], resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }

    assert grants == {
        *(("healingwork.io", "sequences", verb) for verb in ("get", "list", "watch", "patch")),
        ("healingwork.io", "sequences/status", "get"),
        ("healingwork.io", "sequences/status", "patch"),
        *(("", "configmaps", verb) for verb in ("get", "list", "watch")),
        ("", "events", "create"),
    }
    assert not any(verb in ("*", "delete", "update") for _, _, verb in grants)
