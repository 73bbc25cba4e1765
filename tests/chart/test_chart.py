"""The Helm chart and the dev manifests: lint, render, validate against the Kubernetes schemas, and hold
the chart's promises (required values, schema, secure pods, migration hook, existingSecret).

Needs ``.tools/bin/helm`` (``scripts/ensure-tools.sh`` installs it) and ``kubernetes-validate``.
"""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "healingwork"
HELM = ROOT / ".tools" / "bin" / "helm"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
MINIMAL = CHART / "ci" / "minimal-values.yaml"
EXISTING_SECRET = CHART / "ci" / "existing-secret-values.yaml"
DEV_MANIFESTS = sorted((ROOT / "k8s" / "dev").glob("*.yaml"))
DEV_VALUES = sorted((ROOT / "k8s" / "dev" / "values").glob("*.yaml"))
# The Kubernetes versions the chart supports and is validated against (docs/deployment.md): the oldest
# (Chart.yaml kubeVersion), two in between, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.28.0", "1.30.0", "1.33.0", None)
# Kinds of the Prometheus Operator's CRDs: kubernetes-validate has no schema for them; the monitoring
# tests check them instead.
CUSTOM_RESOURCE_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The values every variant renders with: each ci/*.yaml, and what skaffold deploys.
VARIANTS = {
    **{path.name: [path] for path in CI_VALUES},
    "skaffold": [ROOT / "k8s" / "dev" / "values" / "healingwork.yaml"],
    "skaffold-dev-profile": DEV_VALUES,
}

Manifest = dict[str, Any]


def helm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    if not HELM.is_file():
        pytest.fail(f"{HELM.relative_to(ROOT)} is missing: run scripts/ensure-tools.sh first", pytrace=False)
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=False, timeout=60)


def render(*values: Path, sets: tuple[str, ...] = ()) -> list[Manifest]:
    args: list[str | Path] = ["template", "healingwork", CHART, "--namespace", "mail"]
    for path in values:
        args += ["--values", path]
    for assignment in sets:
        args += ["--set", assignment]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(*args: str | Path) -> str:
    result = helm("template", "healingwork", CHART, *args)
    assert result.returncode != 0, f"expected helm template to fail, it rendered:\n{result.stdout}"
    return result.stderr


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for m in manifests:
        if m["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{m['kind']}/{m['metadata']['name']}", m["spec"]["template"]["spec"]
        elif m["kind"] == "CronJob":
            yield f"CronJob/{m['metadata']['name']}", m["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif m["kind"] == "Pod":
            yield f"Pod/{m['metadata']['name']}", m["spec"]


def validate(manifests: list[Manifest], tmp_path: Path) -> None:
    """Validate strictly (unknown fields are errors) against every version in KUBERNETES_VERSIONS.

    Uses the kubernetes-validate package when the environment has it, else its CLI through uvx.
    """
    if importlib.util.find_spec("kubernetes_validate") is None:
        documents = tmp_path / "manifests.yaml"
        documents.write_text(yaml.safe_dump_all([m for m in manifests if m["kind"] not in CUSTOM_RESOURCE_KINDS]))
        for version in KUBERNETES_VERSIONS:
            command = ["uvx", "--from", "kubernetes-validate", "kubernetes-validate", "--strict", "--quiet"]
            result = subprocess.run(
                [*command, *(["-k", version] if version else []), documents],
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR")]
            assert result.returncode == 0, "\n".join(errors) or result.stdout + result.stderr
        return
    import kubernetes_validate

    manifests = [m for m in manifests if m["kind"] not in CUSTOM_RESOURCE_KINDS]
    for version in KUBERNETES_VERSIONS:
        target = version or kubernetes_validate.latest_version()
        for manifest in manifests:
            name = f"{manifest['kind']}/{manifest['metadata']['name']}"
            try:
                kubernetes_validate.validate(manifest, target, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{name} is invalid for Kubernetes {target}: {error.message} at {list(error.path)}")


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_passes(values: Path) -> None:
    result = helm("lint", "--strict", CHART, "--values", values)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_manifests_are_valid_kubernetes(variant: str, tmp_path: Path) -> None:
    manifests = render(*VARIANTS[variant])
    assert {m["kind"] for m in manifests} >= {"ConfigMap", "Deployment", "Service", "Job"}
    validate(manifests, tmp_path)


def test_dev_manifests_are_valid_kubernetes(tmp_path: Path) -> None:
    manifests = [doc for path in DEV_MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert {m["metadata"]["name"] for m in of_kind(manifests, "Service")} == {"postgres", "kafka", "mailpit"}
    validate(manifests, tmp_path)


def test_skaffold_deploys_the_dev_services_before_the_chart() -> None:
    dev_services, app = yaml.safe_load_all((ROOT / "skaffold.yaml").read_text())
    assert dev_services["manifests"]["rawYaml"] == ["k8s/dev/*.yaml"]
    [release] = app["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"]).resolve() == CHART
    for path in [*release["valuesFiles"], "k8s/dev/values/file-sync.yaml"]:
        assert (ROOT / path).is_file(), path
    assert app["build"]["artifacts"][0]["image"] == "healingwork"


def test_the_five_services_run_their_commands_with_probes() -> None:
    deployments = {m["metadata"]["name"]: m for m in of_kind(render(MINIMAL), "Deployment")}
    expected = {
        "intake": "http",
        "scheduler": "health",
        "dispatcher": "health",
        "webhooks": "health",
        "operator": "health",
    }
    assert set(deployments) == {f"healingwork-{name}" for name in expected}
    for name, port in expected.items():
        [container] = deployments[f"healingwork-{name}"]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == [name]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        # Every service has its health port (8080, where /metrics is); the intake also its API port.
        expected_ports = {"http": 8000, "health": 8080} if name == "intake" else {"health": 8080}
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == expected_ports


def test_intake_service_exposes_port_8000() -> None:
    [service] = [s for s in of_kind(render(MINIMAL), "Service") if s["metadata"]["name"] == "healingwork-intake"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_container_runs_non_root_read_only_without_capabilities(values: Path) -> None:
    for name, spec in pod_specs(render(values)):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        # Only the operator talks to the Kubernetes API.
        assert spec["automountServiceAccountToken"] is (name == "Deployment/healingwork-operator"), name
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"], name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["runAsUser"] == 10001, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], name
            assert set(container["resources"]) == {"requests", "limits"}, name


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook_after_its_secret() -> None:
    manifests = render(MINIMAL)
    [job] = of_kind(manifests, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    [database_url] = [e for e in container["env"] if e["name"] == "DATABASE_URL"]
    secret_name = database_url["valueFrom"]["secretKeyRef"]["name"]
    # On a first install no ordinary resource exists yet: the Secret the Job reads must be a hook of the
    # same events, created before it (lower weight).
    [secret] = [m for m in of_kind(manifests, "Secret") if m["metadata"]["name"] == secret_name]
    secret_annotations = secret["metadata"]["annotations"]
    assert secret_annotations["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(secret_annotations["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert "before-hook-creation" in secret_annotations["helm.sh/hook-delete-policy"]
    # Its non-secret settings are inline too: the ConfigMap does not exist yet either.
    assert "envFrom" not in container
    assert {"name": "LOG_LEVEL", "value": "INFO"} in container["env"]


def test_existing_secret_renders_no_secret_and_every_pod_reads_it() -> None:
    manifests = render(EXISTING_SECRET)
    assert of_kind(manifests, "Secret") == []
    referenced = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for _, spec in pod_specs(manifests)
        for container in spec["containers"]
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert referenced == {"healingwork-credentials"}


def test_existing_secret_and_inline_secrets_together_are_rejected() -> None:
    error = render_error("--values", EXISTING_SECRET, "--set", "secrets.hmacSecret=" + "x" * 40)
    assert "secrets.existingSecret (healingwork-credentials) is set" in error


@pytest.mark.parametrize(
    "value",
    [
        "config.kafkaBootstrapServers",
        "config.publicBaseUrl",
        "config.fromEmail",
        "config.fromName",
        "secrets.databaseUrl",
        "secrets.hmacSecret",
        "secrets.smtpUrl",
        "secrets.suppressionHashKey",
    ],
)
def test_rendering_without_a_required_value_fails_naming_it(value: str) -> None:
    error = render_error("--values", MINIMAL, "--set", f"{value}=")
    assert f"{value} is required" in error
    assert error.count(" is required") == 1, error


def test_rendering_without_values_lists_every_missing_one_at_once() -> None:
    error = render_error()
    assert error.count(" is required") == 8, error


def test_short_suppression_hash_key_is_rejected() -> None:
    error = render_error("--values", MINIMAL, "--set", "secrets.suppressionHashKey=too-short")
    assert "secrets.suppressionHashKey must be at least 32 bytes" in error


def test_the_suppression_hash_key_reaches_intake_only() -> None:
    manifests = render(MINIMAL)
    readers = {
        d["metadata"]["name"]
        for d in of_kind(manifests, "Deployment")
        for container in d["spec"]["template"]["spec"]["containers"]
        for env in container.get("env", [])
        if env.get("valueFrom", {}).get("secretKeyRef", {}).get("key") == "SUPPRESSION_HASH_KEY"
    }
    assert readers == {"healingwork-intake"}


def test_topics_are_created_with_the_configured_retention() -> None:
    [config] = [
        m
        for m in of_kind(render(MINIMAL, sets=("config.kafkaTopicRetentionHours=48",)), "ConfigMap")
        if "KAFKA_TOPIC_RETENTION_HOURS" in m.get("data", {})
    ]
    assert config["data"]["KAFKA_TOPIC_RETENTION_HOURS"] == "48"


def test_short_hmac_secret_is_rejected() -> None:
    error = render_error("--values", MINIMAL, "--set", "secrets.hmacSecret=too-short")
    assert "secrets.hmacSecret must be at least 32 bytes" in error


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("intake.replicas=two", "at '/intake/replicas': got string, want integer"),
        ("unknownKey=1", "additional properties 'unknownKey' not allowed"),
        ("intake.replicaCount=2", "additional properties 'replicaCount' not allowed"),
        ("config.logLevel=LOUD", "at '/config/logLevel'"),
        ("config.publicBaseUrl=mail.example.com", "at '/config/publicBaseUrl'"),
    ],
)
def test_values_schema_rejects_wrong_types_and_unknown_keys(assignment: str, message: str) -> None:
    # --set-string keeps "two" a string, as it would be in a values file.
    error = render_error("--values", MINIMAL, "--set-string", assignment)
    assert "values don't meet the specifications of the schema" in error, error
    assert message in error, error


def test_a_wrong_type_in_a_values_file_is_rejected(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("intake:\n  replicas: two\n")
    error = render_error("--values", MINIMAL, "--values", values)
    assert "at '/intake/replicas': got string, want integer" in error, error


def test_config_changes_roll_the_pods() -> None:
    def checksums(*sets: str) -> list[str]:
        return [
            d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in of_kind(render(MINIMAL, sets=sets), "Deployment")
        ]

    assert set(checksums()).isdisjoint(checksums("config.logLevel=DEBUG"))


def test_key_rotation_and_webhook_secrets_reach_intake_only_when_given() -> None:
    previous, webhook = "p" * 20 + "0123456789abcdef", "w" * 20 + "0123456789abcdef"
    with_them = render(MINIMAL, sets=(f"secrets.hmacSecretPrevious={previous}", f"secrets.webhookSecret={webhook}"))
    [secret] = [m for m in of_kind(with_them, "Secret") if m["metadata"]["name"] == "healingwork"]
    assert secret["stringData"]["HMAC_SECRET_PREVIOUS"] == previous
    assert secret["stringData"]["WEBHOOK_SECRET"] == webhook
    intake = next(m for m in of_kind(with_them, "Deployment") if m["metadata"]["name"] == "healingwork-intake")
    [container] = intake["spec"]["template"]["spec"]["containers"]
    optional = {
        env["name"]: env["valueFrom"]["secretKeyRef"]
        for env in container["env"]
        if env.get("valueFrom", {}).get("secretKeyRef", {}).get("optional")
    }
    assert optional == {
        "HMAC_SECRET_PREVIOUS": {"name": "healingwork", "key": "HMAC_SECRET_PREVIOUS", "optional": True},
        "WEBHOOK_SECRET": {"name": "healingwork", "key": "WEBHOOK_SECRET", "optional": True},
        "REQUEST_SIGNING_KEYS": {"name": "healingwork", "key": "REQUEST_SIGNING_KEYS", "optional": True},
    }

    [without] = [m for m in of_kind(render(MINIMAL), "Secret") if m["metadata"]["name"] == "healingwork"]
    assert set(without["stringData"]) == {"DATABASE_URL", "HMAC_SECRET", "SMTP_URL", "SUPPRESSION_HASH_KEY"}
