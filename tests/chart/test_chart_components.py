"""The chart's operator, CRD, CronJobs, scaling, network and monitoring pieces, checked against their
single sources: k8s/crds/, k8s/operator/rbac.yaml, docs/jobs.md, the metrics the code exports and the
runbook in docs/operations.md.

Helm comes from ``scripts/ensure-tools.sh`` (see test_chart.py).
"""

from __future__ import annotations

import ipaddress
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.test_chart import CHART, MINIMAL, ROOT, Manifest, helm, of_kind, pod_specs, render, render_error

PRODUCTION = CHART / "ci" / "production-values.yaml"
CRD_SOURCE = ROOT / "k8s" / "crds" / "sequences.healingwork.io.yaml"
CRD_IN_CHART = CHART / "files" / "sequences.healingwork.io.yaml"
RBAC_SOURCE = ROOT / "k8s" / "operator" / "rbac.yaml"
JOBS_DOC = ROOT / "docs" / "jobs.md"
RUNBOOK = ROOT / "docs" / "operations.md"
JOBS = {"retry-failed": "retryFailed", "aggregate-stats": "aggregateStats", "purge": "purge"}


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    [manifest] = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    return manifest


def container_env(manifest: Manifest) -> dict[str, Any]:
    [container] = manifest["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def exported_metric_names() -> set[str]:
    """Every metric name the services and jobs define (string literals starting healingwork_)."""
    names: set[str] = set()
    for path in [*(ROOT / "services").rglob("*.py"), *(ROOT / "operators").rglob("*.py")]:
        names |= set(re.findall(r'"(healingwork_[a-z0-9_]+)"', path.read_text()))
    return names


def healingwork_metrics_in(expression: str) -> set[str]:
    used = set(re.findall(r"\bhealingwork_[a-z0-9_]+", expression))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}


def markdown_anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


# --- the CRD ------------------------------------------------------------------------------------------


def test_the_chart_ships_the_crd_of_k8s_crds_through_a_link() -> None:
    assert CRD_IN_CHART.is_symlink()
    assert CRD_IN_CHART.resolve() == CRD_SOURCE


def test_the_rendered_crd_is_the_source_plus_release_labels_and_keep() -> None:
    source = yaml.safe_load(CRD_SOURCE.read_text())
    crd = named(render(MINIMAL), "CustomResourceDefinition", "sequences.healingwork.io")

    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"].items() >= source["metadata"]["labels"].items()
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    crd["metadata"] = source["metadata"]
    assert crd == source


def test_the_packaged_chart_holds_the_crd_content_not_a_link(tmp_path: Path) -> None:
    result = helm("package", CHART, "--destination", tmp_path)
    assert result.returncode == 0, result.stderr
    [archive] = tmp_path.glob("healingwork-*.tgz")
    with tarfile.open(archive) as chart:
        member = chart.getmember("healingwork/files/sequences.healingwork.io.yaml")
        assert member.isfile()
        packaged = chart.extractfile(member)
        assert packaged is not None
        assert packaged.read() == CRD_SOURCE.read_bytes()


def test_the_crd_can_be_managed_elsewhere_or_deleted_with_the_release() -> None:
    assert of_kind(render(MINIMAL, sets=("crds.enabled=false",)), "CustomResourceDefinition") == []
    crd = named(render(MINIMAL, sets=("crds.keep=false",)), "CustomResourceDefinition", "sequences.healingwork.io")
    assert "annotations" not in crd["metadata"]


# --- the operator -------------------------------------------------------------------------------------


def source_rules() -> list[dict[str, Any]]:
    [role] = [d for d in yaml.safe_load_all(RBAC_SOURCE.read_text()) if d["kind"] == "Role"]
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def test_the_operator_runs_once_under_its_service_account() -> None:
    manifests = render(MINIMAL)
    deployment = named(manifests, "Deployment", "healingwork-operator")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    # One replica whatever the values say (kopf runs standalone: docs/operator.md "Failure behaviour").
    refused = render_error("--values", MINIMAL, "--set", "operator.replicas=3")
    assert "additional properties 'replicas' not allowed" in refused
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["template"]["spec"]["serviceAccountName"] == "healingwork-operator"
    named(manifests, "ServiceAccount", "healingwork-operator")
    env = container_env(deployment)
    assert env["OPERATOR_NAMESPACES"] == "mail"
    assert env["OPERATOR_REFRESH_INTERVAL_S"] == "60"


def test_by_default_the_operator_may_act_in_the_release_namespace_only() -> None:
    manifests = render(MINIMAL)
    [role] = of_kind(manifests, "Role")
    assert role["metadata"]["namespace"] == "mail"
    assert role["rules"] == source_rules()
    [binding] = of_kind(manifests, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "healingwork-operator",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "healingwork-operator", "namespace": "mail"}]
    assert of_kind(manifests, "ClusterRole") == []


def test_each_watched_namespace_gets_the_same_least_privilege_role() -> None:
    manifests = render(MINIMAL, sets=("operator.watchNamespaces={marketing,sales}",))
    roles = of_kind(manifests, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["marketing", "sales"]
    assert all(r["rules"] == source_rules() for r in roles)
    bindings = of_kind(manifests, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["marketing", "sales"]
    assert all(b["subjects"][0]["namespace"] == "mail" for b in bindings)
    assert (
        container_env(named(manifests, "Deployment", "healingwork-operator"))["OPERATOR_NAMESPACES"]
        == "marketing,sales"
    )


def test_a_cluster_wide_operator_gets_the_same_rules_as_a_cluster_role() -> None:
    manifests = render(MINIMAL, sets=("operator.clusterWide=true",))
    assert of_kind(manifests, "Role") == []
    [role] = of_kind(manifests, "ClusterRole")
    assert role["rules"] == source_rules()
    [binding] = of_kind(manifests, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # Empty OPERATOR_NAMESPACES: every namespace.
    assert container_env(named(manifests, "Deployment", "healingwork-operator"))["OPERATOR_NAMESPACES"] == ""


def test_the_operator_can_be_left_out() -> None:
    manifests = render(MINIMAL, sets=("operator.enabled=false",))
    assert "healingwork-operator" not in {m["metadata"]["name"] for m in manifests}


# --- the CronJobs -------------------------------------------------------------------------------------


def documented_schedules() -> dict[str, str]:
    # The first table of "The jobs": | `name` | `schedule` | ... (a schedule has spaces, a value key not).
    rows = re.findall(r"^\| `([a-z-]+)` \| `([^`]* [^`]*)` \|", JOBS_DOC.read_text(), flags=re.MULTILINE)
    return dict(rows)


def test_the_cronjobs_run_on_the_documented_schedules() -> None:
    cronjobs = {c["metadata"]["name"]: c for c in of_kind(render(MINIMAL), "CronJob")}
    assert documented_schedules().keys() == JOBS.keys()
    assert {name: cronjobs[f"healingwork-{name}"]["spec"]["schedule"] for name in JOBS} == documented_schedules()


@pytest.mark.parametrize("job", JOBS)
def test_a_cronjob_never_overlaps_and_keeps_its_history_as_configured(job: str, tmp_path: Path) -> None:
    key = JOBS[job]
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "jobs": {
                    key: {
                        **yaml.safe_load((CHART / "values.yaml").read_text())["jobs"][key],
                        "backoffLimit": 5,
                        "successfulJobsHistoryLimit": 1,
                        "failedJobsHistoryLimit": 7,
                        "activeDeadlineSeconds": 99,
                        "extraArgs": ["--batch-size", "10"],
                    }
                }
            }
        )
    )
    cronjob = named(render(MINIMAL, values), "CronJob", f"healingwork-{job}")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["timeZone"] == "Etc/UTC"
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (1, 7)
    job_spec = spec["jobTemplate"]["spec"]
    assert (job_spec["backoffLimit"], job_spec["activeDeadlineSeconds"]) == (5, 99)
    # Invalid configuration (exit status 2) is not retried.
    [fail_job] = [r for r in job_spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail_job["onExitCodes"] == {"containerName": job, "operator": "In", "values": [2]}
    [container] = job_spec["template"]["spec"]["containers"]
    assert container["args"] == ["job", job, "--batch-size", "10"]
    assert job_spec["template"]["spec"]["restartPolicy"] == "Never"


def test_a_disabled_job_is_not_rendered_and_the_pushgateway_reaches_the_jobs() -> None:
    manifests = render(MINIMAL, sets=("jobs.purge.enabled=false", "jobs.pushgatewayUrl=http://pgw:9091"))
    assert {c["metadata"]["name"] for c in of_kind(manifests, "CronJob")} == {
        "healingwork-retry-failed",
        "healingwork-aggregate-stats",
    }
    for _, spec in pod_specs(of_kind(manifests, "CronJob")):
        [container] = spec["containers"]
        assert {"name": "PUSHGATEWAY_URL", "value": "http://pgw:9091"} in container["env"]


# --- scaling and disruption ---------------------------------------------------------------------------


def test_without_autoscaling_the_deployments_set_their_replicas() -> None:
    manifests = render(MINIMAL)
    assert of_kind(manifests, "HorizontalPodAutoscaler") == []
    assert named(manifests, "Deployment", "healingwork-intake")["spec"]["replicas"] == 2


def test_an_hpa_owns_the_replica_count_of_intake_and_dispatcher() -> None:
    manifests = render(PRODUCTION)
    hpas = {h["metadata"]["name"]: h for h in of_kind(manifests, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"healingwork-intake", "healingwork-dispatcher"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert "replicas" not in named(manifests, "Deployment", name)["spec"]
    assert (hpas["healingwork-intake"]["spec"]["minReplicas"], hpas["healingwork-intake"]["spec"]["maxReplicas"]) == (
        3,
        12,
    )
    # The consumer-lag metric of the production values rides along with CPU.
    kinds = [m["type"] for m in hpas["healingwork-dispatcher"]["spec"]["metrics"]]
    assert kinds == ["Resource", "External"]


def test_every_long_running_service_but_the_operator_has_a_disruption_budget() -> None:
    manifests = render(MINIMAL)
    budgets = {p["metadata"]["name"]: p for p in of_kind(manifests, "PodDisruptionBudget")}
    assert set(budgets) == {f"healingwork-{c}" for c in ("intake", "scheduler", "dispatcher", "webhooks")}
    for name, budget in budgets.items():
        pod_labels = named(manifests, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert budget["spec"]["maxUnavailable"] == 1


# --- network ------------------------------------------------------------------------------------------


def test_no_ingress_or_network_policy_unless_asked() -> None:
    manifests = render(MINIMAL)
    assert of_kind(manifests, "Ingress") == of_kind(manifests, "NetworkPolicy") == []


def test_the_ingress_routes_only_the_public_paths_of_its_hosts_to_the_intake() -> None:
    ingress = named(render(PRODUCTION), "Ingress", "healingwork-intake")
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "mail.example.com"
    paths = rule["http"]["paths"]
    # The API and webhooks, tracking, unsubscribe; never the probes, nor /schema unless asked for.
    assert [p["path"] for p in paths] == ["/v1", "/t", "/u"]
    for path in paths:
        assert path["pathType"] == "Prefix"
        assert path["backend"] == {"service": {"name": "healingwork-intake", "port": {"name": "http"}}}
    assert ingress["spec"]["tls"] == [{"secretName": "mail-example-com-tls", "hosts": ["mail.example.com"]}]
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_request_signing_keys_have_their_own_secret_key_mounted_into_the_intake_only() -> None:
    keys = "2026-11:" + "k" * 20 + "0123456789abcdef"
    manifests = render(MINIMAL, sets=(f"secrets.requestSigningKeys={keys}",))
    [secret] = [m for m in of_kind(manifests, "Secret") if m["metadata"]["name"] == "healingwork"]
    assert secret["stringData"]["REQUEST_SIGNING_KEYS"] == keys
    holders = {
        d["metadata"]["name"]
        for d in [*of_kind(manifests, "Deployment"), *of_kind(manifests, "CronJob"), *of_kind(manifests, "Job")]
        if "REQUEST_SIGNING_KEYS" in json.dumps(d)
    }
    assert holders == {"healingwork-intake"}


def test_metrics_and_the_schema_stay_off_the_public_port() -> None:
    manifests = render(MINIMAL)
    intake = named(manifests, "Deployment", "healingwork-intake")
    [container] = intake["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["PORT"], env["HEALTH_PORT"], env["OPENAPI_ENABLED"]) == ("8000", "8080", "false")
    public = named(manifests, "Service", "healingwork-intake")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]
    assert "healingwork.io/metrics" not in public["metadata"]["labels"]

    with_docs = named(render(MINIMAL, sets=("intake.openapi=true",)), "Deployment", "healingwork-intake")
    [container] = with_docs["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["OPENAPI_ENABLED"] == "true"


def test_the_production_example_trusts_only_the_ingress_controllers_addresses() -> None:
    # Trusting a whole pod network (10.0.0.0/8) let any pod write its own X-Forwarded-For.
    intake = container_env(named(render(PRODUCTION), "Deployment", "healingwork-intake"))
    networks = [ipaddress.ip_network(part.strip()) for part in intake["TRUSTED_PROXIES"].split(",")]

    assert networks
    assert all(network.num_addresses <= 256 for network in networks), networks


def test_network_policies_admit_only_the_configured_peers() -> None:
    manifests = render(PRODUCTION)
    intake = named(manifests, "NetworkPolicy", "healingwork-intake")
    [http, metrics] = intake["spec"]["ingress"]
    peers = http["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}} in peers
    # The helm test Pod still reaches /readyz.
    assert any(
        p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "test" for p in peers
    )
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    # /metrics is on the health port: the monitoring peers reach that port, the ingress peers the API port.
    assert (http["ports"], metrics["ports"]) == (
        [{"port": "http", "protocol": "TCP"}],
        [{"port": "health", "protocol": "TCP"}],
    )
    workers = named(manifests, "NetworkPolicy", "healingwork-workers")
    assert workers["spec"]["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "NotIn", "values": ["intake"]}
    ]
    [scrape] = workers["spec"]["ingress"]
    assert scrape["ports"] == [{"port": "health", "protocol": "TCP"}]
    egress = named(manifests, "NetworkPolicy", "healingwork-egress")
    assert egress["spec"]["egress"][0]["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    # DNS, the intake (for helm test), and the four rules of the values.
    assert egress["spec"]["egress"][1]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "intake"
    assert len(egress["spec"]["egress"]) == 6


# --- monitoring ---------------------------------------------------------------------------------------


def test_the_service_monitor_scrapes_every_service_that_serves_metrics() -> None:
    manifests = render(PRODUCTION)
    [monitor] = of_kind(manifests, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in of_kind(manifests, "Service") if selector.items() <= s["metadata"]["labels"].items()]
    components = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected}
    assert components == {"intake", "scheduler", "dispatcher", "webhooks", "operator"}
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for service in selected:
        [port] = service["spec"]["ports"]
        assert port["name"] in ports
        # The Service selects the pods of its component, whose container has the named port.
        deployment = named(
            manifests, "Deployment", f"healingwork-{service['metadata']['labels']['app.kubernetes.io/component']}"
        )
        assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert port["targetPort"] in {p["name"] for p in container["ports"]}
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


def alert_rules(manifests: list[Manifest]) -> list[dict[str, Any]]:
    [rule] = of_kind(manifests, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_the_alerts_cover_the_failures_the_platform_promises_to_report() -> None:
    names = {r["alert"] for r in alert_rules(render(PRODUCTION))}
    assert names == {
        "HealingworkIntakeErrorRate",
        "HealingworkOutboxBacklogOld",
        "HealingworkConsumerLag",
        "HealingworkDeadLetters",
        "HealingworkWebhookEndpointDisabled",
        "HealingworkSmtpFailureRate",
        "HealingworkCronJobFailed",
        "HealingworkCronJobStale",
        "HealingworkOperatorDown",
        "HealingworkSequencesNotReady",
        "HealingworkOperatorDatabaseUnreachable",
        "HealingworkOperatorCrdNotServed",
    }


def test_every_alert_uses_metrics_the_code_exports_and_links_its_runbook_section() -> None:
    exported, anchors = exported_metric_names(), markdown_anchors(RUNBOOK)
    rules = alert_rules(render(PRODUCTION))
    assert len([r for r in rules if r["alert"] == "HealingworkCronJobStale"]) == 3
    for rule in rules:
        assert healingwork_metrics_in(rule["expr"]) <= exported, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert anchor in anchors, f"docs/operations.md has no section {rule['alert']}"


def test_alert_thresholds_come_from_values() -> None:
    rules = alert_rules(render(PRODUCTION, sets=("metrics.prometheusRule.outboxBacklogAgeSeconds=42",)))
    [backlog] = [r for r in rules if r["alert"] == "HealingworkOutboxBacklogOld"]
    assert backlog["expr"].endswith("> 42")
    stale = {r["labels"]["cronjob"]: r["expr"] for r in rules if r["alert"] == "HealingworkCronJobStale"}
    assert stale["healingwork-purge"].endswith("> 172800")


def test_the_grafana_dashboard_charts_metrics_the_code_exports() -> None:
    manifests = render(PRODUCTION)
    dashboard_map = named(manifests, "ConfigMap", "healingwork-dashboard")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard_map["metadata"]["annotations"] == {"grafana_folder": "healingwork"}
    dashboard = json.loads(dashboard_map["data"]["healingwork.json"])
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set().union(*(healingwork_metrics_in(e) for e in expressions))
    assert used <= exported_metric_names()
    assert {
        "healingwork_http_requests_total",
        "healingwork_emails_total",
        "healingwork_outbox_oldest_unpublished_age_seconds",
        "healingwork_outgoing_webhook_attempts_total",
        "healingwork_outgoing_webhook_backlog",
    } <= used


def test_monitoring_is_off_unless_enabled() -> None:
    manifests = render(MINIMAL)
    assert of_kind(manifests, "ServiceMonitor") == of_kind(manifests, "PrometheusRule") == []
    assert "healingwork-dashboard" not in {m["metadata"]["name"] for m in of_kind(manifests, "ConfigMap")}


# --- helm test and NOTES ------------------------------------------------------------------------------


def test_helm_test_asks_the_intake_service_for_readyz() -> None:
    pod = named(render(MINIMAL), "Pod", "healingwork-test-readyz")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    assert 'url = "http://healingwork-intake:8000/readyz"' in container["args"][0]
    assert pod["spec"]["restartPolicy"] == "Never"


def test_notes_tell_how_to_reach_and_test_the_release() -> None:
    result = helm("install", "healingwork", CHART, "--values", PRODUCTION, "--dry-run=client", "--namespace", "mail")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "helm test healingwork -n mail" in notes
    assert "https://mail.example.com" in notes
    assert "marketing, sales" in notes


# --- the schema of the new values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("jobs.purge.schedule=daily", "at '/jobs/purge/schedule'"),
        ("jobs.purge.backoffLimit=-1", "at '/jobs/purge/backoffLimit'"),
        ("jobs.purge.retries=1", "additional properties 'retries' not allowed"),
        ("operator.watchNamespaces[0]=Not_A_Namespace", "at '/operator/watchNamespaces/0'"),
        ("intake.autoscaling.maxReplicas=0", "at '/intake/autoscaling/maxReplicas'"),
        ("scheduler.autoscaling.enabled=true", "additional properties 'autoscaling' not allowed"),
        ("metrics.prometheusRule.smtpFailureRatio=2", "at '/metrics/prometheusRule/smtpFailureRatio'"),
        ("ingress.hosts[0]=https://mail.example.com", "at '/ingress/hosts/0'"),
        ("ingress.paths[0]=/metrics", "at '/ingress/paths/0'"),
        ("ingress.paths[0]=/", "at '/ingress/paths/0'"),
    ],
)
def test_values_schema_rejects_bad_packaging_values(assignment: str, message: str) -> None:
    error = render_error("--values", MINIMAL, "--set", assignment)
    assert "values don't meet the specifications of the schema" in error, error
    assert message in error, error


def test_the_cronjob_table_of_docs_jobs_md_matches_the_chart_defaults() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["jobs"]
    rows = re.findall(r"^\| `([a-z-]+)` \| `jobs\.(\w+)` \| (.+) \|$", JOBS_DOC.read_text(), flags=re.MULTILINE)
    assert [name for name, _, _ in rows] == list(JOBS)
    for name, key, rest in rows:
        assert JOBS[name] == key
        values = defaults[key]
        expected = [
            f"`{values['schedule']}`",
            str(values["backoffLimit"]),
            str(values["activeDeadlineSeconds"]),
            str(values["startingDeadlineSeconds"]),
            f"{values['successfulJobsHistoryLimit']} / {values['failedJobsHistoryLimit']}",
            f"{values['staleAfterSeconds']} s",
        ]
        assert [cell.strip() for cell in rest.split("|")] == expected, name


# --- outgoing webhooks --------------------------------------------------------------------------------


def test_the_webhooks_service_gets_the_hmac_secret_that_keys_the_endpoint_secrets() -> None:
    deployment = named(render(MINIMAL), "Deployment", "healingwork-webhooks")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HMAC_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "HMAC_SECRET"
    assert env["HMAC_SECRET_PREVIOUS"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "WEBHOOK_ALLOW_PRIVATE_NETWORKS" not in env  # private addresses stay refused in a cluster


def test_the_webhooks_service_can_be_left_out() -> None:
    manifests = render(MINIMAL, sets=("webhooks.enabled=false",))
    names = {m["metadata"]["name"] for m in manifests}
    assert not {n for n in names if "webhooks" in n}
