"""Chart details a long release name, a retained failed Job, a shared Kafka cluster and a control plane
inside 10/8 would otherwise break: names fitted to their kind's limit, HealingworkCronJobFailed clearing
after a later success, the consumer-lag alert scoped to the release, the API server egress rule.

The alert expressions are checked as rendered text here; where ``promtool`` is built
(``.tools/promtool/promtool``), ``test_the_cronjob_failed_alert_clears_after_a_later_success`` also
evaluates the rendered rule with ``promtool test rules`` over series as kube-state-metrics exports them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.test_chart import CHART, ROOT, Manifest, helm, of_kind

PRODUCTION = CHART / "ci" / "production-values.yaml"
LONG_RELEASE = "marketing-platform-prod-eu"
# Helm's own limit for a release name.
LONGEST_RELEASE = "a-release-name-of-fifty-three-characters-helm-allows1"
PROMTOOL = ROOT / ".tools" / "promtool" / "promtool"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A CronJob's Jobs are named "<cronjob>-<10 digits>" and that name is a label value of their pods (63).
LIMITS = {"CronJob": 52}


def render_release(release: str, *values: Path, sets: tuple[str, ...] = ()) -> list[Manifest]:
    args: list[str | Path] = ["template", release, CHART, "--namespace", "marketing"]
    for path in values:
        args += ["--values", path]
    for assignment in sets:
        args += ["--set", assignment]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def alert_rules(manifests: list[Manifest], alert: str) -> list[dict[str, Any]]:
    [rule] = of_kind(manifests, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if r["alert"] == alert]


def names(manifests: list[Manifest], kind: str) -> set[str]:
    return {m["metadata"]["name"] for m in of_kind(manifests, kind)}


# --- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("release", [LONG_RELEASE, LONGEST_RELEASE])
def test_every_name_fits_its_kinds_limit_for_a_long_release_name(release: str) -> None:
    manifests = render_release(release, PRODUCTION)

    for manifest in manifests:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        if kind == "CustomResourceDefinition":
            continue
        assert len(name) <= LIMITS.get(kind, 63), f"{kind} {name} has {len(name)} characters"
        assert DNS_LABEL.match(name), f"{kind} {name} is not a DNS label"
    for kind in {m["kind"] for m in manifests}:
        listed = [m["metadata"]["name"] for m in of_kind(manifests, kind)]
        assert len(listed) == len(set(listed)) or kind in {"Role", "RoleBinding"}, f"two {kind}s share a name"


def test_a_shortened_name_keeps_its_component_and_a_stable_hash() -> None:
    first = names(render_release(LONG_RELEASE, PRODUCTION), "CronJob")
    again = names(render_release(LONG_RELEASE, PRODUCTION), "CronJob")

    assert first == again
    # 54 characters in full: over the CronJob limit, so cut with a hash of the full name before the job.
    [shortened] = [n for n in first if "aggregate-stats" in n]
    assert re.fullmatch(r"marketing-platform-prod-eu-hea-[0-9a-f]{5}-aggregate-stats", shortened), shortened
    # The ones that fit are left alone.
    assert "marketing-platform-prod-eu-healingwork-retry-failed" in first
    assert "marketing-platform-prod-eu-healingwork-purge" in first


def test_the_names_of_a_short_release_do_not_change() -> None:
    manifests = render_release("healingwork", PRODUCTION)

    assert names(manifests, "CronJob") == {
        "healingwork-retry-failed",
        "healingwork-aggregate-stats",
        "healingwork-purge",
    }
    assert names(manifests, "Deployment") == {
        "healingwork-intake",
        "healingwork-scheduler",
        "healingwork-dispatcher",
        "healingwork-webhooks",
        "healingwork-operator",
    }


def test_references_to_shortened_names_follow_them() -> None:
    manifests = render_release(LONGEST_RELEASE, PRODUCTION)
    deployments, services, cronjobs = (names(manifests, k) for k in ("Deployment", "Service", "CronJob"))

    for hpa in of_kind(manifests, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for ingress in of_kind(manifests, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] in services
    for alert in ("HealingworkCronJobFailed", "HealingworkCronJobStale"):
        rules = alert_rules(manifests, alert)
        assert {r["labels"]["cronjob"] for r in rules} == cronjobs
        for rule in rules:
            assert f'cronjob="{rule["labels"]["cronjob"]}"' in rule["expr"]
    [test_pod] = of_kind(manifests, "Pod")
    intake = next(name for name in services if name.endswith("-intake"))
    assert f"http://{intake}:" in yaml.safe_dump(test_pod)
    [deployment] = [d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"].endswith("-operator")]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] in names(manifests, "ServiceAccount")


# --- alerts ------------------------------------------------------------------------------------------


def test_the_cronjob_failed_alert_compares_the_last_failed_run_with_the_last_success() -> None:
    rules = alert_rules(render_release("healingwork", PRODUCTION), "HealingworkCronJobFailed")

    assert {r["labels"]["cronjob"] for r in rules} == {
        "healingwork-retry-failed",
        "healingwork-aggregate-stats",
        "healingwork-purge",
    }
    [purge] = [r for r in rules if r["labels"]["cronjob"] == "healingwork-purge"]
    runs = 'namespace="marketing", job_name=~"healingwork-purge-[0-9]+"'
    assert (
        purge["expr"].split()
        == (
            f"max(kube_job_status_start_time{{{runs}}} and on (namespace, job_name)"
            f" (kube_job_status_failed{{{runs}}} > 0))"
            ' > (max(kube_cronjob_status_last_successful_time{namespace="marketing", cronjob="healingwork-purge"})'
            " or vector(0))"
        ).split()
    )


def promtool_rules_test(tmp_path: Path, rule: dict[str, Any], series: list[dict[str, str]], alerts: list[Any]) -> str:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "jobs", "rules": [rule]}]}))
    test_file = tmp_path / "test.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules_file)],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": alerts}],
            }
        )
    )
    result = subprocess.run(
        [PROMTOOL, "test", "rules", test_file], capture_output=True, text=True, timeout=60, check=False
    )
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def test_the_cronjob_failed_alert_clears_after_a_later_success(tmp_path: Path) -> None:
    if not PROMTOOL.is_file():  # a skip would verify nothing on CI: `make test` builds it first
        pytest.fail(f"{PROMTOOL.relative_to(ROOT)} is missing: run `make tools`", pytrace=False)
    [rule] = [
        r
        for r in alert_rules(render_release("healingwork", PRODUCTION), "HealingworkCronJobFailed")
        if r["labels"]["cronjob"] == "healingwork-purge"
    ]
    job = 'namespace="marketing", job_name="healingwork-purge-{}"'
    # Minute 0: a run fails (started at t=60 s); the failed Job stays. Minute 10: the next run starts (600 s)
    # and succeeds, so the CronJob's last successful time becomes 660 s from minute 11 on.
    series = [
        {"series": f"kube_job_status_start_time{{{job.format(1)}}}", "values": "60x30"},
        {"series": f'kube_job_status_failed{{{job.format(1)}, reason="BackoffLimitExceeded"}}', "values": "1x30"},
        {"series": f"kube_job_status_start_time{{{job.format(2)}}}", "values": "_x9 600x20"},
        {"series": f"kube_job_status_failed{{{job.format(2)}}}", "values": "_x9 0x20"},
        {
            "series": 'kube_cronjob_status_last_successful_time{namespace="marketing", cronjob="healingwork-purge"}',
            "values": "_x10 660x19",
        },
    ]
    firing = {
        "exp_labels": {"severity": "warning", "cronjob": "healingwork-purge"},
        "exp_annotations": rule["annotations"],
    }
    alerts = [
        {"eval_time": "5m", "alertname": "HealingworkCronJobFailed", "exp_alerts": [firing]},
        {"eval_time": "15m", "alertname": "HealingworkCronJobFailed", "exp_alerts": []},
    ]

    outcome = promtool_rules_test(tmp_path, rule, series, alerts)

    assert outcome.startswith("exit 0"), outcome


def test_the_consumer_lag_alert_selects_the_releases_own_consumer_groups() -> None:
    [plain] = alert_rules(render_release("healingwork", PRODUCTION), "HealingworkConsumerLag")
    [prefixed] = alert_rules(
        render_release("healingwork", PRODUCTION, sets=("config.kafkaGroupPrefix=eu.prod-",)),
        "HealingworkConsumerLag",
    )

    # PromQL matchers are anchored: another release's "<prefix>healingwork-dispatcher" does not match.
    assert 'consumergroup=~"healingwork-(scheduler|dispatcher|webhooks)"' in plain["expr"]
    assert 'consumergroup=~"eu\\.prod-healingwork-(scheduler|dispatcher|webhooks)"' in prefixed["expr"]
    assert plain["labels"]["namespace"] == prefixed["labels"]["namespace"] == "marketing"


# --- egress ------------------------------------------------------------------------------------------


def test_the_api_server_is_reachable_by_the_operator_alone_even_inside_10_8() -> None:
    manifests = render_release("healingwork", PRODUCTION)
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(manifests, "NetworkPolicy")}

    operator = policies["healingwork-operator-egress"]
    assert operator["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert operator["policyTypes"] == ["Egress"]
    [rule] = operator["egress"]
    assert [peer["ipBlock"]["cidr"] for peer in rule["to"]] == ["10.0.0.2/32", "10.0.0.3/32"]
    assert [p["port"] for p in rule["ports"]] == [443, 6443]
    # Every other pod keeps the general rules, where the internet rule leaves private ranges out.
    internet = [r for r in policies["healingwork-egress"]["egress"] if any("ipBlock" in p for p in r.get("to", []))]
    assert [p["port"] for r in internet for p in r["ports"]] == [465]


def test_without_api_server_peers_no_operator_policy_is_rendered() -> None:
    manifests = render_release("healingwork", PRODUCTION, sets=("networkPolicy.apiServer=null",))

    assert "healingwork-operator-egress" not in names(manifests, "NetworkPolicy")


def test_every_rendered_alert_rule_passes_promtool_check_rules(tmp_path: Path) -> None:
    if not PROMTOOL.is_file():  # a skip would verify nothing on CI: `make test` builds it first
        pytest.fail(f"{PROMTOOL.relative_to(ROOT)} is missing: run `make tools`", pytrace=False)
    [rule] = of_kind(render_release(LONG_RELEASE, PRODUCTION), "PrometheusRule")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))

    result = subprocess.run(
        [PROMTOOL, "check", "rules", rules_file], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule['spec']['groups'])} rules found" in result.stdout
